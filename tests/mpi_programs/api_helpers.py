"""What a Horovod user reaches for, on N ranks: the world helpers, optimizer-state broadcast,
allreduce, the averaged model, mixed BatchNorm buffers, join() with uneven data (every mode of
the wrapper, asynchronous and lock-step), dsgd with one skipped step, and ssgd/odsgd through the
same API against the simulator. Rank 0 prints one JSON line of checks."""

import copy
import json

import torch
from mpi4py import MPI
from torch import nn

import pcasgd
from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.sim import simulate
from tests.reference import Quadratic, QuadraticPoint

comm = pcasgd.init(deadline=120.0)
rank, size = pcasgd.rank(), pcasgd.size()
checks: dict[str, object] = {}


def everywhere(value: bool) -> bool:
    return all(comm.allgather(bool(value)))


def same_on_all_ranks(tensors: list[torch.Tensor]) -> bool:
    theirs = comm.bcast([t.detach().clone() for t in tensors], root=0)
    return everywhere(all(torch.equal(a, b) for a, b in zip(tensors, theirs, strict=True)))


# -- the world --------------------------------------------------------------------------------
checks["world"] = [rank == comm.Get_rank(), size == comm.Get_size(), pcasgd.local_rank() == rank]
checks["world"].append(pcasgd.local_size() == size)  # one node here

# -- allreduce ----------------------------------------------------------------------------------
mean = pcasgd.allreduce(torch.tensor([float(rank), 2.0 * rank]), name="test")
total = pcasgd.allreduce(float(rank), op="sum")
largest = pcasgd.allreduce(torch.tensor(rank, dtype=torch.int64), op="max")
expected_mean = (size - 1) / 2
checks["allreduce"] = [
    torch.allclose(mean, torch.tensor([expected_mean, 2 * expected_mean])),
    float(total) == size * (size - 1) / 2,
    int(largest) == size - 1 and largest.dtype == torch.int64,
]

# -- broadcast_optimizer_state ------------------------------------------------------------------
torch.manual_seed(rank)
net = nn.Linear(3, 2)
pcasgd.broadcast_parameters(net.state_dict(), root_rank=0)
sgd = torch.optim.SGD(net.parameters(), lr=0.1 * (rank + 1), momentum=0.9)
net(torch.randn(4, 3)).sum().backward()
sgd.step()  # momentum buffers differ between ranks
pcasgd.broadcast_optimizer_state(sgd, root_rank=0)
buffers = [sgd.state[p]["momentum_buffer"] for p in net.parameters()]
checks["broadcast_optimizer_state"] = [same_on_all_ranks(buffers), everywhere(sgd.param_groups[0]["lr"] == 0.1)]

# -- averaged_model -----------------------------------------------------------------------------
norm = nn.BatchNorm1d(2)
with torch.no_grad():
    norm.weight.fill_(float(rank))
    norm.running_mean.fill_(2.0 * rank)
with pcasgd.averaged_model(norm) as averaged:
    inside = [float(averaged.weight[0].detach()), float(averaged.running_mean[0])]
checks["averaged_model"] = [
    inside == [expected_mean, 2 * expected_mean],
    float(norm.weight[0].detach()) == rank and float(norm.running_mean[0]) == 2.0 * rank,
]


# -- mixed BatchNorm buffers: one lock-step dsgd step with a negligible lr mixes only ----------------
def buffer_after_one_mix(mix_buffers: bool) -> float:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    pcasgd.broadcast_parameters(model)
    model[1].running_mean.fill_(float(rank))
    model.eval()  # the forward pass leaves the running statistics alone
    with pcasgd.DecentralizedOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-30), model, mode="dsgd", deterministic=True, mix_buffers=mix_buffers
    ) as opt:
        model(torch.randn(3, 2)).sum().backward()
        opt.step()
    return float(model[1].running_mean[0])


ring = topology.build("ring", size).at(0).weights
checks["mix_buffers"] = [
    abs(buffer_after_one_mix(True) - float(ring[rank] @ torch.arange(size, dtype=torch.float64).numpy())) < 1e-6,
    buffer_after_one_mix(False) == float(rank),
]

# -- the quadratic problem of tests/reference.py, through the wrappers ------------------------------
ITERATIONS, LR, MU = 24, 0.05, 0.9
problem = Quadratic(size)


def train(mode: str, steps: int, skip: int | None = None, save_at: int | None = None, resume=None, **options):
    """``steps`` steps of ``mode`` (``skip``: one step not taken), then join(); returns the model,
    whether join() kept its weights, and the (weights, state_dict) saved before step ``save_at``.
    ``resume``: such a pair to continue from, at its iteration."""
    model = QuadraticPoint(problem, rank, None if resume is None else resume[0])
    opt = pcasgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU), model, mode, **options)
    saved = None
    with opt:
        if resume is not None:
            opt.load_state_dict(resume[1])
        for k in range(opt.iteration, steps):
            if k == save_at:
                saved = (model.x.detach().clone(), copy.deepcopy(opt.state_dict()))  # as torch.save would
            opt.zero_grad()
            model.loss(k).backward()
            if k != skip:  # a skipped step, as GradScaler skips one after an overflow
                opt.step()
        joined_at = model.x.detach().clone()
        opt.join()
        kept = torch.equal(joined_at, model.x.detach())
    return model, kept, saved


# uneven data: rank r has 10 + 3 r batches
for mode, options in (
    ("dsgd", {}),
    ("pcasgd", {}),
    ("pcasgd", {"deterministic": True}),
    ("ssgd", {}),
    ("odsgd", {"odsgd_warmup": 3}),
):
    model, kept, _ = train(mode, 10 + 3 * rank, **options)
    name = f"join_{mode}" + ("_deterministic" if options.get("deterministic") else "")
    finite = everywhere(bool(torch.isfinite(model.x).all()))
    if mode in ("ssgd", "odsgd"):  # a joined rank applies the others' reductions: weights stay equal
        checks[name] = [finite, same_on_all_ranks([model.x])]
    else:  # a joined rank's weights stay as they were when it joined
        checks[name] = [finite, everywhere(kept)]

model, _, _ = train("dsgd", 12, skip=5 if rank == 1 else None)
checks["dsgd_skipped_step"] = everywhere(bool(torch.isfinite(model.x).all()))

# ssgd and odsgd through the API equal the simulator, and a state saved at step 12 (odsgd: a
# reduction in flight) continues to the same weights
for mode, options in (("ssgd", {}), ("odsgd", {"odsgd_warmup": 5})):
    model, _, saved = train(mode, ITERATIONS, save_at=12, **options)
    continued, _, _ = train(mode, ITERATIONS, resume=saved, **options)
    checks[f"{mode}_resumed_exactly"] = everywhere(torch.equal(continued.x, model.x))
    finals = comm.gather(model.x.detach().clone(), root=0)
    if rank == 0:
        config = AlgorithmConfig(mode=mode, lr=LR, momentum=MU, **options)
        sim = simulate(config, size, delays.parse("none"), Quadratic(size), problem.initial(), ITERATIONS, 1)
        # after join() an odsgd model holds the global weights: the simulator's reference
        checks[f"{mode}_matches_simulator"] = max(float((f - sim.reference_params).abs().max()) for f in finals)

if rank == 0:
    print(json.dumps(checks), flush=True)
MPI.Finalize()
