"""Deterministic --backend mpi against --backend sim, same seeds: prints one JSON line per case
(rank 0) with the largest absolute difference between the final weights of every agent."""

import json
import sys
import tempfile
from pathlib import Path

import torch
from mpi4py import MPI

from pcasgd.app.train import run_training
from pcasgd.cli import build_parser, run_config_from

comm = MPI.COMM_WORLD
modes = sys.argv[1].split(",")
topologies = sys.argv[2].split(",")
delays = sys.argv[3].split(";")
extra = sys.argv[4].split() if len(sys.argv) > 4 else []
scratch = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None))
for mode in modes:
    for topology in topologies:
        for delay in delays:
            flags = ["train", "--mode", mode, "--topology", topology, "--delay", delay, "--epochs", "2", "--seed", "3"]
            flags += extra
            mpi = run_config_from(build_parser().parse_args([*flags, "--backend", "mpi", "--deterministic"]))
            name = f"{mode}-{topology}-{delay}".replace(":", "_").replace(",", "_").replace("=", "_")
            summary = run_training(mpi, scratch / f"mpi-{name}", overwrite=True)
            if comm.rank == 0:
                sim = run_config_from(build_parser().parse_args([*flags, "--backend", "sim"]))
                reference = run_training(sim, scratch / f"sim-{name}", overwrite=True)
                got = torch.load(scratch / f"mpi-{name}" / "model.pt")
                want = torch.load(scratch / f"sim-{name}" / "model.pt")
                diff = max(float((got[key] - want[key]).abs().max()) for key in want)
                print(
                    json.dumps(
                        {
                            "mode": mode,
                            "topology": topology,
                            "delay": delay,
                            "max_abs_diff": diff,
                            "mpi_staleness": summary["staleness"]["histogram"],
                            "sim_staleness": reference["staleness"]["histogram"],
                            "mpi_ages": summary["ages"],
                            "sim_ages": reference["ages"],
                            "mpi_accuracy": summary["final"]["test_accuracy"],
                            "sim_accuracy": reference["final"]["test_accuracy"],
                        }
                    ),
                    flush=True,
                )
