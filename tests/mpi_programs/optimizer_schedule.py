"""DecentralizedOptimizer driven by torch's learning-rate schedulers, deterministic, on the
quadratic problem: with StepLR the weights equal the simulator's under the same step schedule
(so the predictor used the scheduled rate), and differ from a run whose rate stayed at its start.
OneCycleLR (which needs momentum in the optimizer's defaults) drives it too. Rank 0 prints one
JSON line."""

import json

import torch

import pcasgd
from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.sim import simulate
from tests.reference import Quadratic, QuadraticPoint

ITERATIONS, PER_EPOCH, LR = 30, 10, 0.05
comm = pcasgd.init()
rank, size = comm.Get_rank(), comm.Get_size()
problem = Quadratic(size)


def train(scheduler_for) -> torch.Tensor:
    model = QuadraticPoint(problem, rank)
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    with pcasgd.DecentralizedOptimizer(sgd, model, mode="pcasgd", delay="fixed:2", deterministic=True) as opt:
        scheduler = scheduler_for(opt)
        for k in range(ITERATIONS):
            opt.zero_grad()
            model.loss(k).backward()
            opt.step()
            scheduler.step()
    return model.x.detach().clone()


stepped = train(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=15, gamma=0.1))
one_cycle = train(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=ITERATIONS))
finals = comm.gather(stepped, root=0)
if rank == 0:

    def reference(schedule: str) -> list[torch.Tensor]:
        config = AlgorithmConfig(mode="pcasgd", lr=LR, momentum=0.0, lr_schedule=schedule, lr_decay=0.1)
        ring = topology.build("ring", size)
        return simulate(
            config, size, delays.parse("fixed:2"), Quadratic(size), problem.initial(), PER_EPOCH, 3, topology=ring
        ).agent_params

    def distance(expected: list[torch.Tensor]) -> float:
        return max(float((a - b).abs().max()) for a, b in zip(finals, expected, strict=True))

    print(
        json.dumps(
            {
                "scheduled_diff": distance(reference("step:1.5")),
                "constant_diff": distance(reference("constant")),
                "one_cycle_finite": bool(torch.isfinite(one_cycle).all()),
            }
        ),
        flush=True,
    )
