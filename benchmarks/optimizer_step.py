"""Cost of ``DecentralizedOptimizer.step()`` next to the forward and backward pass it follows.

    python benchmarks/optimizer_step.py [--model resnet18] [--steps 12] [--batch-size 32] [--ranks 2]

One real ``mpirun`` job of ``--ranks`` ranks (one thread each) trains torchvision's model on
random CIFAR-sized images (the cost of a step does not depend on the pixel values) with
``torch.optim.SGD(momentum=0.9)`` wrapped in :class:`pcasgd.DecentralizedOptimizer`
(``pcasgd`` mode, ring; ``--overlap``: the reads fly during the next forward and backward pass).
Per rank it times forward+backward and ``step()`` for every step after
the first two (first touch of memory), and reports medians over steps and ranks, their ratio,
and the size of ``torch.save(opt.state_dict())`` against the weights'.

The package comes from ``PYTHONPATH`` when set, so two checkouts can be measured side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(model_name: str, steps: int, batch_size: int, mode: str, overlap: bool) -> None:
    """Runs inside the MPI job."""
    import torch
    import torchvision

    import pcasgd

    torch.set_num_threads(1)
    comm = pcasgd.init()
    torch.manual_seed(comm.Get_rank())
    model = getattr(torchvision.models, model_name)(num_classes=10)
    pcasgd.broadcast_parameters(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    compute, stepping = [], []
    options = {"mode": mode, "topology": "ring", "deadline": 600.0, "overlap": overlap}
    with pcasgd.DecentralizedOptimizer(sgd, model, **options) as opt:
        for _ in range(steps):
            started = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            computed = time.perf_counter()
            opt.step()
            compute.append(computed - started)
            stepping.append(time.perf_counter() - computed)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        saved = buffer.tell()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gathered = comm.gather((compute[2:], stepping[2:], saved, weights), root=0)
    if comm.Get_rank() == 0:
        forward_backward = statistics.median(t for rank in gathered for t in rank[0])
        step = statistics.median(t for rank in gathered for t in rank[1])
        result = {
            "model": model_name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "forward_backward_s": forward_backward,
            "step_s": step,
            "step_over_forward_backward": step / forward_backward,
            "state_dict_bytes": gathered[0][2],
            "weight_bytes": weights,
        }
        print(json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mode", default="pcasgd")
    parser.add_argument("--overlap", action="store_true", help="overlap=True: reads during the next forward+backward")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.steps, args.batch_size, args.mode, args.overlap)
        return 0
    from pcasgd.runtime.launch import run_json_job

    command = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size), "--mode", args.mode, *(["--overlap"] if args.overlap else [])]
    result, errors = run_json_job(args.ranks, command, ROOT)
    if result is None:
        print(f"failed: {errors[-2000:]}", file=sys.stderr)
        return 1
    print(
        f"{result['model']} ({result['parameters']:,} parameters), {args.ranks} ranks, batch {args.batch_size}"
        f"{', overlap' if args.overlap else ''}: "
        f"forward+backward {result['forward_backward_s']:.3f} s, step() {result['step_s']:.3f} s, "
        f"step / forward+backward {result['step_over_forward_backward']:.2f}; "
        f"state_dict {result['state_dict_bytes'] / 2**20:.1f} MiB "
        f"for {result['weight_bytes'] / 2**20:.1f} MiB of weights"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
