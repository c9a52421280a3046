"""Training throughput on synthetic ImageNet-shaped data, with Horovod's benchmark flags.

    launch/mpirun.sh -n 2 examples/synthetic_benchmark.py --model resnet18 --batch-size 16
    launch/mpirun.sh -n 2 examples/synthetic_benchmark.py --mode ssgd          # Horovod's algorithm
    horovodrun --gloo -np 2 -H localhost:2 python examples/synthetic_benchmark.py --horovod --local-bn

The flags and the report are those of Horovod's ``examples/pytorch/pytorch_synthetic_benchmark.py``
(``--fp16-allreduce``, ``--use-adasum``, ``--num-warmup-batches``, ``--num-batches-per-iter``,
``--num-iters``, ``--no-cuda``), and so are the library calls: the only line that tells pcasgd
from Horovod is the import below (``--horovod`` takes Horovod's, for the side-by-side run of
``benchmarks/synthetic_throughput.py``). ``--mode`` picks pcasgd's algorithm; batch normalization
is ``SyncBatchNorm`` where the ranks hold one model (``ssgd``, ``odsgd``, Horovod) and each
agent's own ``BatchNorm2d`` in the decentralized modes, whose agents hold different models;
``--local-bn`` takes each rank's own everywhere (Horovod's ``SyncBatchNorm`` runs only on GPUs).
"""

import argparse
import timeit

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torchvision import models

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="resnet50", help="a torchvision model name")
parser.add_argument("--batch-size", type=int, default=32, help="images per rank and batch")
parser.add_argument("--num-warmup-batches", type=int, default=10, help="batches before timing")
parser.add_argument("--num-batches-per-iter", type=int, default=10, help="batches per timed iteration")
parser.add_argument("--num-iters", type=int, default=10, help="timed iterations")
parser.add_argument("--fp16-allreduce", action="store_true", help="Compression.fp16 (pcasgd: half-precision snapshots)")
parser.add_argument("--use-adasum", action="store_true", help="op=Adasum (refused by pcasgd, with what to use)")
parser.add_argument("--no-cuda", action="store_true", help="train on the CPU even where CUDA is available")
parser.add_argument("--mode", default="pcasgd", help="pcasgd's algorithm (ignored with --horovod)")
parser.add_argument("--horovod", action="store_true", help="run Horovod (horovod.torch) instead of pcasgd")
parser.add_argument("--local-bn", action="store_true", help="each rank's own BatchNorm2d, never SyncBatchNorm")
args = parser.parse_args()
args.cuda = not args.no_cuda and torch.cuda.is_available()

if args.horovod:
    import horovod.torch as hvd

    extra = {}
else:
    import pcasgd as hvd  # pcasgd answers to Horovod's names

    extra = {"mode": args.mode}

hvd.init()
if args.cuda:
    torch.cuda.set_device(hvd.local_rank())
    torch.backends.cudnn.benchmark = True

one_model = (args.horovod or args.mode in ("ssgd", "odsgd")) and not args.local_bn
model = getattr(models, args.model)(norm_layer=hvd.SyncBatchNorm if one_model else nn.BatchNorm2d)
lr_scaler = 1 if args.use_adasum else hvd.size()  # Adasum needs no scaling of the rate
if args.cuda:
    model.cuda()
    if args.use_adasum and hvd.nccl_built():
        lr_scaler = hvd.local_size()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * lr_scaler)
optimizer = hvd.DistributedOptimizer(
    optimizer,
    named_parameters=model.named_parameters(),
    compression=hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none,
    op=hvd.Adasum if args.use_adasum else hvd.Average,
    **extra,
)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
hvd.broadcast_optimizer_state(optimizer, root_rank=0)

images = torch.randn(args.batch_size, 3, 224, 224)
labels = torch.randint(0, 1000, (args.batch_size,))
if args.cuda:
    images, labels = images.cuda(), labels.cuda()


def train_one_batch() -> None:
    optimizer.zero_grad()
    functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def report(line: str) -> None:
    if hvd.rank() == 0:
        print(line, flush=True)


device = "GPU" if args.cuda else "CPU"
library = "horovod" if args.horovod else f"pcasgd {args.mode}"
report(f"Library: {library}\nModel: {args.model}\nBatch size: {args.batch_size}\nNumber of {device}s: {hvd.size()}")
report("Running warmup...")
timeit.timeit(train_one_batch, number=args.num_warmup_batches)
report("Running benchmark...")
rates = []
for index in range(args.num_iters):
    seconds = timeit.timeit(train_one_batch, number=args.num_batches_per_iter)
    rates.append(args.batch_size * args.num_batches_per_iter / seconds)
    report(f"Iter #{index}: {rates[-1]:.1f} img/sec per {device}")
mean, spread = np.mean(rates), 1.96 * np.std(rates)
report(f"Img/sec per {device}: {mean:.1f} +-{spread:.1f}")
report(f"Total img/sec on {hvd.size()} {device}(s): {hvd.size() * mean:.1f} +-{hvd.size() * spread:.1f}")
if not args.horovod:
    optimizer.close()
