"""bfloat16 through every MPI path of the API, on 2 ranks: prints one JSON line per rank."""

import json

import torch

import pcasgd

pcasgd.init()
rank = pcasgd.rank()
bf16 = torch.bfloat16
result = {"rank": rank}

# broadcast_parameters: rank 0's bits everywhere
model = torch.nn.Linear(3, 2).to(bf16)
torch.nn.init.constant_(model.weight, 1.0 + rank)
pcasgd.broadcast_parameters(model)
result["broadcast"] = model.weight.float().flatten().tolist()

# allreduce and averaged_model: the mean
result["allreduce"] = pcasgd.allreduce(torch.tensor([1.0, 3.0], dtype=bf16) * (1 + rank)).float().tolist()
torch.nn.init.constant_(model.weight, 1.0 + 2 * rank)
with pcasgd.averaged_model(model) as averaged:
    result["averaged"] = averaged.weight.float().flatten().tolist()

# ssgd: the mean gradient of [1, .01, 100, -2] * (1 + 2 rank) is [2, .02, 200, -4]
weights = torch.nn.Parameter(torch.zeros(4, dtype=bf16))
sgd = torch.optim.SGD([weights], lr=1.0)
with pcasgd.DistributedOptimizer(sgd, mode="ssgd", named_parameters=[("w", weights)]) as ssgd:
    weights.grad = torch.tensor([1.0, 0.01, 100.0, -2.0], dtype=bf16) * (1 + 2 * rank)
    ssgd.step()
result["ssgd"] = (-weights.detach().float()).tolist()

# a decentralized optimizer: its windows hold bf16 snapshots
model = torch.nn.Linear(3, 2).to(bf16)
pcasgd.broadcast_parameters(model)
sgd = torch.optim.SGD(model.parameters(), lr=0.1)
with pcasgd.DistributedOptimizer(sgd, model, mode="pcasgd", deterministic=True) as pc:
    for _ in range(3):
        sgd.zero_grad()
        model(torch.ones(4, 3, dtype=bf16)).pow(2).mean().backward()
        pc.step()
result["decentralized_finite"] = bool(torch.isfinite(model.weight.float()).all())

# Horovod's compression and ops: fp16 gradients summed, fp16 snapshots in the windows
weights = torch.nn.Parameter(torch.zeros(4))
sgd = torch.optim.SGD([weights], lr=1.0)
options = {"compression": pcasgd.Compression.fp16, "op": pcasgd.Sum}
with pcasgd.DistributedOptimizer(sgd, mode="ssgd", named_parameters=[("w", weights)], **options) as ssgd:
    weights.grad = torch.tensor([1.0, 0.01, 100.0, -2.0]) * (1 + 2 * rank)
    ssgd.step()
result["ssgd_fp16_sum"] = (-weights.detach()).tolist()
model = torch.nn.Linear(3, 2)
pcasgd.broadcast_parameters(model)
sgd = torch.optim.SGD(model.parameters(), lr=0.1)
with pcasgd.DistributedOptimizer(sgd, model, compression=pcasgd.Compression.fp16, deterministic=True) as pc:
    for _ in range(3):
        sgd.zero_grad()
        model(torch.ones(4, 3)).pow(2).mean().backward()
        pc.step()
    result["window_itemsize"] = pc.window.itemsize
result["fp16_snapshots_finite"] = bool(torch.isfinite(model.weight).all())
print(json.dumps(result), flush=True)
