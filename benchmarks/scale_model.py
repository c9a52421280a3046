"""Scale beyond this machine, on paper: traffic, spectral gap and staleness per topology.

    python benchmarks/scale_model.py [--params 25557032] [--compute-ms 200] [--gbps 100] [--latency-us 5]

For 8 to 1024 agents and each topology, with a model of ``--params`` float32 parameters
(default: ResNet-50) and ``--compute-ms`` of computation per step, it prints what each agent
moves per step and the time that takes on a ``--gbps`` network with ``--latency-us`` per
message, next to the spectral gap of the mixing matrix (computed, not estimated), and a
staleness estimate. The model and its assumptions are in docs/scale.md; every figure is
a prediction, none was measured on a cluster.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

from pcasgd import topology

SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
DECENTRALIZED = ("ring", "torus", "exponential", "random:4", "one-peer-exp")
ROUND_TRIPS_PER_READ = 3  # lock, get (header, then slot), unlock


@dataclass(frozen=True)
class Prediction:
    agents: int
    scheme: str
    messages: int  # per agent per step
    megabytes: float  # received per agent per step (the server's, for the parameter server)
    comm_ms: float
    step_ms: float
    spectral_gap: float | None
    staleness: float | None  # expected iterations of staleness of a read (asynchronous schemes)


def decentralized(n: int, spec: str, model_bytes: float, compute_ms: float, bandwidth: float, latency: float):
    """pcasgd reads parameters and gradient of every in-neighbour each step, between steps."""
    schedule = topology.build(spec, n, seed=0)
    degree = sum(len(schedule.at(k).in_neighbours(0)) for k in range(8)) / 8  # time-varying: average
    received = degree * 2 * model_bytes
    comm_ms = 1e3 * (received / bandwidth + degree * ROUND_TRIPS_PER_READ * latency)
    step_ms = compute_ms + comm_ms
    # A read finds the neighbour on average half an iteration past its last publish, plus the
    # iterations it completes while the read travels.
    staleness = 0.5 + comm_ms / step_ms
    return Prediction(n, spec, round(degree), received / 1e6, comm_ms, step_ms, schedule.spectral_gap(), staleness)


def ring_allreduce(n: int, model_bytes: float, compute_ms: float, bandwidth: float, latency: float) -> Prediction:
    """ssgd: each agent sends and receives 2 (n - 1) / n of the gradient in 2 (n - 1) messages."""
    received = 2 * (n - 1) / n * model_bytes
    comm_ms = 1e3 * (received / bandwidth + 2 * (n - 1) * latency)
    return Prediction(n, "ssgd (ring allreduce)", 2 * (n - 1), received / 1e6, comm_ms, compute_ms + comm_ms, 1.0, 0.0)


def parameter_server(n: int, model_bytes: float, compute_ms: float, bandwidth: float, latency: float) -> Prediction:
    """One server: per round of n pushes its link carries n gradients in and n weight copies out
    (full duplex: the larger direction counts); workers wait for it once it is the bottleneck."""
    server_ms = 1e3 * (n * model_bytes / bandwidth + n * latency)
    step_ms = max(compute_ms + 1e3 * (2 * model_bytes / bandwidth + 2 * latency), server_ms)
    staleness = n - 1.0  # asynchronous: every other worker pushes once between a pull and its push
    return Prediction(n, "ps-asgd (one server)", 2, n * model_bytes / 1e6, server_ms, step_ms, None, staleness)


def predict(params: int, compute_ms: float, gbps: float, latency_us: float) -> list[Prediction]:
    model_bytes, bandwidth, latency = 4.0 * params, gbps * 1e9 / 8, latency_us * 1e-6
    rows = []
    for n in SIZES:
        for spec in DECENTRALIZED:
            if spec.startswith("random:") and n <= int(spec.split(":")[1]):
                continue
            rows.append(decentralized(n, spec, model_bytes, compute_ms, bandwidth, latency))
        rows.append(ring_allreduce(n, model_bytes, compute_ms, bandwidth, latency))
        rows.append(parameter_server(n, model_bytes, compute_ms, bandwidth, latency))
    return rows


def table(rows: list[Prediction]) -> str:
    lines = [
        "| agents | scheme | messages/step | MB in/step | comm ms/step | step ms | spectral gap | staleness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = "-" if r.spectral_gap is None else f"{r.spectral_gap:.3g}"
        staleness = "-" if r.staleness is None else f"{r.staleness:.2f}"
        lines.append(
            f"| {r.agents} | {r.scheme} | {r.messages} | {r.megabytes:,.0f} | {r.comm_ms:,.1f} | {r.step_ms:,.1f} "
            f"| {gap} | {staleness} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=25_557_032, help="model parameters (ResNet-50)")
    parser.add_argument("--compute-ms", type=float, default=200.0, help="forward + backward per step")
    parser.add_argument("--gbps", type=float, default=100.0)
    parser.add_argument("--latency-us", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    rows = predict(args.params, args.compute_ms, args.gbps, args.latency_us)
    print(json.dumps([asdict(r) for r in rows]) if args.json else table(rows), end="" if not args.json else "\n")
    return 0 if all(math.isfinite(r.step_ms) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
