"""Killing ranks of a running ``pcasgd train --fault-tolerant`` job from outside, with SIGKILL
(or stopping them with SIGSTOP, ending them with SIGTERM): what the fault-tolerance tests and
benchmarks/fault_tolerance.py do to a job."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import subprocess
import sys
import threading
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


#: Debian's Fashion-MNIST (.ci/datasets.sh), which Horovod's MNIST examples read in MNIST's layout.
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
ELASTIC_EXAMPLE = ROOT / "examples" / "horovod_pytorch_mnist_elastic.py"


def torchvision_mnist(folder: Path) -> Path:
    """``folder`` laid out so that torchvision's ``datasets.MNIST`` finds Fashion-MNIST there (the
    same IDX files as MNIST's): Horovod's examples then download nothing."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in FASHION_MNIST.parent.glob("*-ubyte.gz"):
        (raw / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    return folder


#: What the port changed in Horovod's example (docs/api.md), as (port, Horovod's) text pairs.
PORT_CHANGES = [
    ("import pcasgd as hvd  # pcasgd answers to Horovod's names\n", "import horovod.torch as hvd\n"),
    (
        "parser.add_argument('--fault-tolerant', action='store_true', default=False,\n"
        "                    help='survive a dead rank (launch/mpirun.sh then starts ULFM)')\n",
        "",
    ),
    (
        "op=hvd.Adasum if args.use_adasum else hvd.Average,\n"
        "                                     fault_tolerant=args.fault_tolerant)",
        "op=hvd.Adasum if args.use_adasum else hvd.Average)",
    ),
]


def horovods_elastic_example(folder: Path) -> Path:
    """Horovod's own elastic example (``examples/elastic/pytorch/pytorch_mnist_elastic.py``), written
    into ``folder`` by undoing the port's changes (:data:`PORT_CHANGES`): the baseline runs the
    very script the port runs, under Horovod."""
    text = ELASTIC_EXAMPLE.read_text()
    for port, horovods in PORT_CHANGES:
        if text.count(port) != 1:
            raise RuntimeError(f"{ELASTIC_EXAMPLE} no longer holds the ported line(s) {port!r}: update PORT_CHANGES")
        text = text.replace(port, horovods)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "pytorch_mnist_elastic.py"
    script.write_text(text)
    return script


@dataclass
class ExampleRun:
    returncode: int
    stdout: str
    stderr: str
    killed_at: float | None  # time.time() of the SIGKILL (None: nothing killed)
    accuracy: float | None  # the example's own test print, percent (None: not printed)
    # time.time() of the first progress line past every one printed before the kill: the survivors
    # training again, one log interval on (None: nothing killed, or no such line)
    progressed_at: float | None


#: The example's progress line: "Train Epoch: 1 [1280/15000 (34%)]".
PROGRESS = re.compile(r"Train Epoch: \d+ \[\d+/\d+ \((\d+)%\)\]")


def run_elastic_example(
    ranks: int,
    data: Path,
    seed: int,
    victim: int | None,
    env: dict[str, str],
    timeout: float,
    tag: Path,
    horovod: list[str] | None = None,
) -> ExampleRun:
    """Horovod's elastic example as ported (examples/horovod_pytorch_mnist_elastic.py), one epoch on
    ``ranks`` ranks under ``launch/mpirun.sh --fault-tolerant``; rank ``victim`` (None: none) is
    SIGKILLed once a rank is a quarter through its shard. ``tag`` names the job's processes
    (:data:`JOB_TAG`). ``horovod``: a horovodrun command line in elastic mode (launch/hosts.sh
    horovodrun) that runs Horovod's own example instead (:func:`horovods_elastic_example`) under
    Horovod Elastic. Raises :class:`subprocess.TimeoutExpired` (the job killed) past ``timeout``."""
    flags = ["--epochs", "1", "--data-dir", str(data), "--log-interval", "20", "--seed", str(seed)]
    if horovod is None:
        command = ["bash", "launch/mpirun.sh", "-n", str(ranks), str(ELASTIC_EXAMPLE), *flags, "--fault-tolerant"]
    else:
        script = horovods_elastic_example(tag / "horovod")
        command = [*horovod, "-np", str(ranks), "--min-np", "1", sys.executable, str(script), *flags]
    env = {**env, JOB_TAG: str(tag), "PYTHONUNBUFFERED": "1"}  # its prints, as they come
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    draining = threading.Thread(target=lambda: errors.extend(job.stderr), daemon=True)
    draining.start()
    lines, killed_at, progressed_at, furthest = [], None, None, -1
    deadline = threading.Timer(timeout, job.kill)
    deadline.start()
    try:
        for line in job.stdout:
            lines.append(line)
            progress = PROGRESS.search(line)
            percent = -1 if progress is None else int(progress.group(1))
            if killed_at is None:
                furthest = max(furthest, percent)
                if victim is not None and furthest >= 25:
                    killed_at = time.time()
                    os.kill(rank_pid(tag, victim), signal.SIGKILL)
            elif progressed_at is None and percent > furthest:
                progressed_at = time.time()
        job.wait()
        draining.join()
    finally:
        timed_out = not deadline.is_alive()
        deadline.cancel()
        job.kill()
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout)
    stdout, stderr = "".join(lines), "".join(errors)
    found = re.search(r"Test set: Average loss: [\d.]+, Accuracy: ([\d.]+)%", stdout)
    accuracy = None if found is None else float(found.group(1))
    return ExampleRun(job.returncode, stdout, stderr, killed_at, accuracy, progressed_at)
