"""pcasgd.SyncBatchNorm on 2 ranks, each with half of a batch, against nn.BatchNorm2d on the whole
batch in one process: outputs, running statistics and gradients. Prints one JSON line per rank."""

import json

import torch

import pcasgd
from pcasgd.errors import ConfigError

pcasgd.init()
rank, size = pcasgd.rank(), pcasgd.size()
torch.manual_seed(0)
whole = torch.randn(8, 3, 4, 4) * 2 + 1
weight, bias = torch.randn(3), torch.randn(3)
target = torch.randn(8, 3, 4, 4)

reference = torch.nn.BatchNorm2d(3)
synced = pcasgd.SyncBatchNorm(3)
for layer in (reference, synced):
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)

x_all = whole.clone().requires_grad_()
out_all = reference(x_all)
((out_all - target) ** 2).sum().backward()

part = slice(rank * 8 // size, (rank + 1) * 8 // size)
x = whole[part].clone().requires_grad_()
out = synced(x)
((out - target[part]) ** 2).sum().backward()
weight_grad = pcasgd.allreduce(synced.weight.grad, op="sum")  # the ranks' parts add up
bias_grad = pcasgd.allreduce(synced.bias.grad, op="sum")


def gap(a, b):
    return float((a.detach() - b.detach()).abs().max())


gaps = {
    "output": gap(out, out_all[part]),
    "running_mean": gap(synced.running_mean, reference.running_mean),
    "running_var": gap(synced.running_var, reference.running_var),
    "input_grad": gap(x.grad, x_all.grad[part]),
    "weight_grad": gap(weight_grad, reference.weight.grad),
    "bias_grad": gap(bias_grad, reference.bias.grad),
}
# decentralized agents hold different models: the layer is refused, naming what to use
# (given the model, or only its tensors as Horovod's scripts pass them)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), pcasgd.SyncBatchNorm(3))
refused = {}
for name, given in (("decentralized", {"model": model}), ("decentralized_named", {})):
    try:
        named = {} if given else {"named_parameters": model.named_parameters()}
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        pcasgd.DistributedOptimizer(sgd, mode="pcasgd", **given, **named)
        refused[name] = ""
    except ConfigError as error:
        refused[name] = str(error)
print(json.dumps({"rank": rank, **gaps, **refused}), flush=True)
