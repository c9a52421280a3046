"""Your own training loop, decentralized: each MPI rank trains on its shard of the digits data
and mixes its weights with its ring neighbours through pcasgd.DecentralizedOptimizer.

    launch/mpirun.sh -n 4 examples/digits_own_loop.py --epochs 10 --mode pcasgd

With ``--fault-tolerant`` (launch/mpirun.sh then starts the job under ULFM) a rank's death is
survived inside ``step()``: the survivors re-shard the data over the new world in the reset
callback (Horovod Elastic's name) and train on; each rank prints its own accuracy each epoch.
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
    parser.add_argument("--fault-tolerant", action="store_true")
    args = parser.parse_args()

    comm = pcasgd.init()
    rank = comm.Get_rank()
    torch.manual_seed(rank)  # different on purpose: broadcast_parameters makes them equal
    data = load("digits")

    def own_shard() -> torch.Tensor:
        return torch.from_numpy(partition_iid(len(data.train_y), pcasgd.size(), seed=0)[pcasgd.rank()])

    shard = own_shard()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    pcasgd.broadcast_parameters(model)
    per_epoch = (len(shard) + args.batch_size - 1) // args.batch_size
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pcasgd.DecentralizedOptimizer(
        sgd, model, mode=args.mode, iterations_per_epoch=per_epoch, fault_tolerant=args.fault_tolerant
    ) as opt:

        def on_state_reset() -> None:  # a rank died: the data of the world as it is now
            nonlocal shard
            shard = own_shard()

        opt.register_reset_callbacks([on_state_reset])
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
            if args.fault_tolerant:  # no collective outside step(): step() is where a death is survived
                print(f"rank {rank} epoch {epoch + 1}: test accuracy {accuracy:.4f}", flush=True)
                continue
            accuracies = comm.gather(accuracy, root=0)
            if rank == 0:
                print(f"epoch {epoch + 1}: test accuracy per rank {[round(a, 4) for a in accuracies]}", flush=True)
    if args.fault_tolerant:
        print(f"rank {rank} (now {pcasgd.rank()} of {pcasgd.size()}): test accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
