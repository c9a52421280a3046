"""Asynchronous dsgd mixes exactly x_j^k (x_j^(k-1) with overlap) on a directed graph, while one
rank pauses at every step so that the ranks that do not wait for it directly run ahead (on the
exponential graph of 8 ranks, up to 3 steps): the weights after ITERATIONS steps must equal a
lock-step run's. Argument: 'overlap' or 'blocking'. Rank 0 prints one JSON line."""

import json
import sys
import time

import torch
from mpi4py import MPI

import pcasgd
from tests.reference import Quadratic, QuadraticPoint

ITERATIONS, LR, MU, PAUSED, PAUSE_SECONDS = 24, 0.05, 0.9, 5, 0.03
overlap = sys.argv[1] == "overlap"
comm = pcasgd.init()
rank, size = comm.Get_rank(), comm.Get_size()
problem = Quadratic(size)


def run(deterministic: bool) -> torch.Tensor:
    model = QuadraticPoint(problem, rank)
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU)
    options = {"mode": "dsgd", "topology": "exponential", "overlap": overlap, "deterministic": deterministic}
    with pcasgd.DecentralizedOptimizer(sgd, model, **options) as opt:
        for k in range(ITERATIONS):
            if rank == PAUSED and not deterministic:
                time.sleep(PAUSE_SECONDS)
            opt.zero_grad()
            model.loss(k).backward()
            opt.step()
    return model.x.detach().clone()


asynchronous = run(deterministic=False)
lock_step = run(deterministic=True)
difference = comm.allreduce(float((asynchronous - lock_step).abs().max()), op=MPI.MAX)
if rank == 0:
    print(json.dumps({"ranks": size, "overlap": overlap, "max_abs_diff": difference}), flush=True)
