"""Killing ranks of a running ``pcasgd train --fault-tolerant`` job from outside, with SIGKILL
(or stopping them with SIGSTOP, ending them with SIGTERM): what the fault-tolerance tests and
benchmarks/fault_tolerance.py do to a job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pcasgd.app.checkpoint import FILE
from pcasgd.runtime.launch import FAULT_TOLERANT_FLAGS, FAULT_TOLERANT_MCA

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class KilledRun:
    """A fault-tolerant training job some of whose ranks were killed with SIGKILL."""

    returncode: int
    stdout: str
    stderr: str
    killed_at: list[float]  # time.time() of each kill


#: An environment variable that names a job for :func:`rank_pid` when its command line does not
#: (a training script of your own, which takes no ``--out``).
JOB_TAG = "PCASGD_JOB_TAG"


def rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the training process of rank ``rank`` writing into ``out`` (on any host of
    launch/hosts.sh's bed too: its hosts share this machine's processes): ``out`` on its command
    line, or as its :data:`JOB_TAG`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        named = b"pcasgd.cli" in command and str(out).encode() in command
        if not (named or f"{JOB_TAG}={out}".encode() in environ) or b"python" not in command[0]:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ or f"HOROVOD_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def epochs_done(out: Path, recorded: bool = False) -> int:
    """The most epochs any rank of the run in ``out`` has done, as its files show: rank 0's
    records, or a rank's newest checkpoint (an asynchronous rank may be far ahead of rank 0);
    ``recorded``: rank 0's records only."""
    records = _lines(out / "metrics.jsonl")
    if recorded:
        return records
    names = (FILE.fullmatch(path.name) for path in out.glob("checkpoints/rank-*/*"))
    checkpoints = [int(name.group(1)) for name in names if name is not None]
    return max([records, *checkpoints])


def train_and_kill(
    launcher: list[str],
    ranks: int,
    out: Path,
    flags: list[str],
    kills: list[tuple[int, float | None]],
    after_epochs: int,
    env: dict[str, str],
    timeout: float,
    launch_flags: list[str] | None = None,
    recorded: bool = False,
    program: list[str] | None = None,
    signal_number: int = signal.SIGKILL,
) -> KilledRun:
    """Run ``pcasgd train --fault-tolerant`` on ``ranks`` ranks with ``launcher`` (mpirun, or
    launch/hosts.sh mpirun) under ULFM; once the fastest rank has done ``after_epochs`` epochs,
    kill each ``(rank, delay)`` of ``kills``, ``delay`` seconds after the previous kill (None: once
    rank 0 has stepped on a world without the ranks killed before it). Raises
    :class:`subprocess.TimeoutExpired` (the job killed) past ``timeout`` seconds. ``launch_flags``
    replace mpirun's (ULFM's flags and ``-n ranks``) for another launcher; ``recorded``: kill once
    rank 0 has recorded ``after_epochs`` epochs; ``program`` replaces ``python -m pcasgd.cli train
    --backend mpi`` (empty for launch/mpirun.sh, which adds it); ``signal_number``: what is sent
    instead of SIGKILL."""
    command = [
        *launcher,
        *(launch_flags if launch_flags is not None else [*FAULT_TOLERANT_FLAGS, "-n", str(ranks)]),
        *(program if program is not None else [sys.executable, "-m", "pcasgd.cli", "train", "--backend", "mpi"]),
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
        while epochs_done(out, recorded) < after_epochs:
            if job.poll() is not None or time.monotonic() - started > timeout:
                break
            time.sleep(0.05)
        for rank, delay in kills:
            if delay is None:  # once rank 0 stepped on the world without every rank killed so far
                while _lines(out / "events.jsonl") < len(killed_at) and job.poll() is None:
                    time.sleep(0.05)
            else:
                time.sleep(delay)
            pid = rank_pid(out, rank)
            if pid is None:
                ended = "" if job.poll() is None else f"; the job ended ({job.returncode}): {job.stderr.read()[-3000:]}"
                raise RuntimeError(f"no process of rank {rank} writing {out} to kill{ended}")
            killed_at.append(time.time())
            os.kill(pid, signal_number)
        stdout, stderr = job.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except BaseException:
        job.kill()
        job.communicate()
        raise
    finally:
        for rank, _ in kills:  # a stopped rank outlives its job otherwise
            pid = rank_pid(out, rank)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return KilledRun(job.returncode, stdout, stderr, killed_at)
