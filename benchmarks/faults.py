"""Killing ranks of a running ``pcasgd train --fault-tolerant`` job from outside, with SIGKILL:
what the fault-tolerance tests and benchmarks/fault_tolerance.py do to a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pcasgd.runtime.launch import FAULT_TOLERANT_FLAGS, FAULT_TOLERANT_MCA

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class KilledRun:
    """A fault-tolerant training job some of whose ranks were killed with SIGKILL."""

    returncode: int
    stdout: str
    stderr: str
    killed_at: list[float]  # time.time() of each kill


def rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the training process of rank ``rank`` writing into ``out`` (on any host of
    launch/hosts.sh's bed too: its hosts share this machine's processes)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"pcasgd.cli" not in command or str(out).encode() not in command:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def train_and_kill(
    launcher: list[str],
    ranks: int,
    out: Path,
    flags: list[str],
    kills: list[tuple[int, float]],
    after_records: int,
    env: dict[str, str],
    timeout: float,
) -> KilledRun:
    """Run ``pcasgd train --fault-tolerant`` on ``ranks`` ranks with ``launcher`` (mpirun, or
    launch/hosts.sh mpirun) under ULFM; once ``out``'s metrics hold ``after_records`` records,
    kill each ``(rank, delay)`` of ``kills``, ``delay`` seconds after the previous kill. Raises
    :class:`subprocess.TimeoutExpired` (the job killed) past ``timeout`` seconds."""
    command = [
        *launcher,
        *FAULT_TOLERANT_FLAGS,
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "pcasgd.cli",
        "train",
        "--backend",
        "mpi",
        "--fault-tolerant",
        "--out",
        str(out),
        *flags,
    ]
    job = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **FAULT_TOLERANT_MCA},
        cwd=ROOT,
    )
    started = time.monotonic()
    killed_at = []
    try:
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= after_records):
            if job.poll() is not None or time.monotonic() - started > timeout:
                break
            time.sleep(0.05)
        for rank, delay in kills:
            time.sleep(delay)
            pid = rank_pid(out, rank)
            if pid is None:
                raise RuntimeError(f"no process of rank {rank} writing {out} to kill (did the run end already?)")
            killed_at.append(time.time())
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except BaseException:
        job.kill()
        job.communicate()
        raise
    return KilledRun(job.returncode, stdout, stderr, killed_at)
