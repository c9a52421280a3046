"""DecentralizedOptimizer wrapping torch.optim.SGD, deterministic, against the simulator on the
quadratic problem of tests/reference.py; with delay 'none', also a state_dict round trip at
iteration 15; the third argument, 'overlap' or 'blocking', says how they exchange. Rank 0 prints one JSON line."""

import json
import sys

import torch
from mpi4py import MPI

import pcasgd
from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.sim import simulate
from tests.reference import Quadratic, QuadraticPoint

ITERATIONS, PER_EPOCH, LR, MU = 30, 10, 0.05, 0.9
mode, delay = sys.argv[1], sys.argv[2]
OVERLAP = sys.argv[3] == "overlap"
comm = pcasgd.init()
rank, size = comm.Get_rank(), comm.Get_size()
problem = Quadratic(size)


def wrapped(model: QuadraticPoint) -> pcasgd.DecentralizedOptimizer:
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU)
    return pcasgd.DecentralizedOptimizer(
        sgd,
        model,
        mode=mode,
        delay=delay,
        deterministic=True,
        iterations_per_epoch=PER_EPOCH,
        pv_warmup_epochs=1.0,
        overlap=OVERLAP,
    )


def train(model: QuadraticPoint, opt: pcasgd.DecentralizedOptimizer, start: int, stop: int) -> None:
    for k in range(start, stop):
        opt.zero_grad()
        model.loss(k).backward()
        opt.step()


model = QuadraticPoint(problem, rank)
with wrapped(model) as opt:
    train(model, opt, 0, ITERATIONS)
finals = comm.gather(model.x.detach().clone(), root=0)

resumed_diff = None
if delay == "none" and not OVERLAP:  # the API's resumed overlap reads x^k first: not the same weights
    first = QuadraticPoint(problem, rank)
    with wrapped(first) as opt:
        train(first, opt, 0, 15)
        state = opt.state_dict()
    second = QuadraticPoint(problem, rank, first.x.detach())
    with wrapped(second) as opt:
        opt.load_state_dict(state)
        train(second, opt, 15, ITERATIONS)
    resumed_diff = comm.allreduce(float((second.x.detach() - model.x.detach()).abs().max()), op=MPI.MAX)

if rank == 0:
    config = AlgorithmConfig(mode=mode, lr=LR, momentum=MU, pv_warmup_epochs=1.0, overlap=OVERLAP)
    sim = simulate(
        config,
        size,
        delays.parse(delay),
        Quadratic(size),
        problem.initial(),
        PER_EPOCH,
        ITERATIONS // PER_EPOCH,
        topology=topology.build("ring", size),
    )
    diff = max(float((a - b).abs().max()) for a, b in zip(finals, sim.agent_params, strict=True))
    print(json.dumps({"mode": mode, "delay": delay, "max_abs_diff": diff, "resumed_diff": resumed_diff}), flush=True)
