"""The optimizer API as a Horovod user calls it, and called wrongly, on 2 ranks. Every rank
starts from different weights and BatchNorm statistics; rank 0 prints one JSON line of checks."""

import json

import torch
from torch import nn

import pcasgd
from pcasgd.errors import ConfigError, UsageError

comm = pcasgd.init()
rank = comm.Get_rank()


def net() -> nn.Module:
    torch.manual_seed(rank)  # each rank different
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[1].running_mean.add_(rank + 1.0)
    model[1].num_batches_tracked.add_(rank + 5)
    return model


def same_everywhere(model: nn.Module) -> bool:
    mine = [t.detach().clone() for t in model.state_dict().values()]
    theirs = comm.bcast(mine, root=0)
    return all(comm.allgather(all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))))


checks = {}
for name, tensors in (
    ("state_dict_root_rank", lambda m: m.state_dict()),
    ("module", lambda m: m),
    ("named_parameters", lambda m: list(m.named_parameters()) + list(m.named_buffers())),
):
    model = net()
    if name == "state_dict_root_rank":
        pcasgd.broadcast_parameters(tensors(model), root_rank=0)
    else:
        pcasgd.broadcast_parameters(tensors(model))
    checks[name] = same_everywhere(model)

model, other = net(), net()
try:
    pcasgd.DecentralizedOptimizer(torch.optim.SGD(other.parameters(), lr=0.1), model)
    checks["foreign_optimizer"] = "accepted"
except ConfigError as error:
    checks["foreign_optimizer"] = str(error)

pcasgd.broadcast_parameters(model)
optimizer = pcasgd.DecentralizedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
try:
    optimizer.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    checks["plain_state"] = "accepted"
except ConfigError as error:
    checks["plain_state"] = str(error)
optimizer.close()
before = [p.detach().clone() for p in model.parameters()]
model(torch.randn(8, 4)).sum().backward()
try:
    optimizer.step()
    checks["step_after_close"] = "accepted"
except UsageError as error:
    checks["step_after_close"] = str(error)
checks["weights_untouched"] = all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
if rank == 0:
    print(json.dumps(checks), flush=True)
