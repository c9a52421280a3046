"""Your own training loop, decentralized: each MPI rank trains on its shard of the digits data
and mixes its weights with its ring neighbours through pcasgd.DecentralizedOptimizer.

    launch/mpirun.sh -n 4 examples/digits_own_loop.py --epochs 10 --mode pcasgd
"""

import argparse

import torch
from torch import nn

import pcasgd
from pcasgd.app.data import load, partition_iid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mode", default="pcasgd")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    comm = pcasgd.init()
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(rank)  # different on purpose: broadcast_parameters makes them equal
    data = load("digits")
    shard = torch.from_numpy(partition_iid(len(data.train_y), size, seed=0)[rank])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    pcasgd.broadcast_parameters(model)
    per_epoch = (len(shard) + args.batch_size - 1) // args.batch_size
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pcasgd.DecentralizedOptimizer(
        sgd, model, mode=args.mode, topology="ring", iterations_per_epoch=per_epoch
    ) as opt:
        for epoch in range(args.epochs):
            order = shard[torch.randperm(len(shard))]
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
                loss.backward()
                opt.step()
            with torch.no_grad():
                accuracy = (model(data.test_x).argmax(dim=1) == data.test_y).float().mean().item()
            accuracies = comm.gather(accuracy, root=0)
            if rank == 0:
                print(f"epoch {epoch + 1}: test accuracy per rank {[round(a, 4) for a in accuracies]}", flush=True)


if __name__ == "__main__":
    main()
