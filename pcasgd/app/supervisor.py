"""``pcasgd supervise`` (``launch/elastic.sh``): keep a training job at the size its hosts allow.

In the manner of torchrun's elastic agent and Horovod Elastic's driver: a host-discovery script
(Horovod's format: one ``host:slots`` line per host, or ``host`` for one slot) says how many
ranks may run. The supervisor starts ``launch/mpirun.sh -n SLOTS`` with the train flags and
watches, every ``poll`` seconds, the script and the run's ``events.jsonl``. It stops the job and
starts it again with ``--resume`` (app/resize.py maps the run onto the new size) when

- the slots change (a host left, or came back or was added), or
- the job lost ranks (``--fault-tolerant`` survived a death, so it runs short-handed) while the
  slots would run more: the world grows back from the newest checkpoints;

and when the job fails, up to ``max_restarts`` times. A restart loses the iterations since the
newest checkpoint (at most ``--checkpoint-every`` epochs) and the job's start-up. Each restart
is one line of ``OUT/restarts.jsonl``. The supervisor runs the ranks on this machine; the
script's hosts count only by their slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pcasgd import log
from pcasgd.app.checkpoint import checkpointed_ranks
from pcasgd.app.metrics import EVENTS_FILE
from pcasgd.app.run_files import put_back_replaced
from pcasgd.errors import ConfigError

LOG = log.get("supervise")

RESTARTS_FILE = "restarts.jsonl"
LAUNCHER = Path(__file__).resolve().parents[2] / "launch" / "mpirun.sh"
STOP_SECONDS = 30.0  # how long a stopped job may take to end before it is killed


def parse_slots(text: str) -> int:
    """The ranks a host-discovery script's output allows (``host:slots`` or ``host`` lines)."""
    total = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        host, _, slots = line.partition(":")
        if not host or (slots and not slots.isdigit()):
            raise ConfigError(f"host discovery printed {line!r}: expected 'host:slots' or 'host'")
        total += int(slots) if slots else 1
    return total


@dataclass
class Supervisor:
    """One supervised run: ``discover()`` gives the slots now, ``train_flags`` the job's flags
    (``--out`` among them), ``out`` its run directory."""

    discover: Callable[[], int]
    train_flags: list[str]
    out: Path
    epochs: int  # the run's --epochs: a summary of that many ends the supervision
    min_ranks: int = 2
    max_restarts: int = 3
    poll: float = 1.0
    launcher: Sequence[str] = ("bash", str(LAUNCHER))

    def run(self) -> int:
        """Run the job to its end; its exit status (the last attempt's)."""
        failures, started = 0, time.monotonic()
        ranks = self._wait_for_slots()
        flags = self.train_flags  # the first start as asked; later ones resume
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # the job is in a session of its own: end it too
        while True:
            job = self._start(ranks, flags)
            try:
                reason, wanted = self._watch(job, ranks, self._lost_ranks())
            finally:
                if job.poll() is None and sys.exc_info()[0] is not None:
                    _stop(job)
            status = job.wait()
            if self._finished():  # also when it finished just before it was stopped
                return 0
            if reason is None:
                failures += 1
                if failures > self.max_restarts:
                    LOG.warning(f"supervise: the job failed {failures} times; giving up")
                    return status
                reason, wanted = f"the job exited {status}", self._wait_for_slots()
            put_back_replaced(self.out)  # a resume stopped before its first record left them aside
            resume = bool(checkpointed_ranks(self.out))
            # no checkpoint yet: the directory holds only this job's first attempt
            flags = [*_without_start_flags(self.train_flags), "--resume" if resume else "--overwrite"]
            flags += [str(self.out)] if resume else []
            self._log_restart(reason, ranks, wanted, resume, time.monotonic() - started)
            ranks = wanted

    def _start(self, ranks: int, flags: list[str]) -> subprocess.Popen:
        LOG.info(f"supervise: starting {ranks} ranks")
        return subprocess.Popen([*self.launcher, "-n", str(ranks), *flags], start_new_session=True)

    def _watch(self, job: subprocess.Popen, ranks: int, lost_before: int) -> tuple[str | None, int]:
        """Wait for ``job`` to end, or stop it when the world should change size: the reason and
        the new size (None and ``ranks``: it ended by itself)."""
        while job.poll() is None:
            time.sleep(self.poll)
            slots = self.discover()
            lost = self._lost_ranks() - lost_before
            reason = None
            if slots != ranks and slots >= self.min_ranks:
                reason = f"the hosts now allow {slots} ranks instead of {ranks}"
            elif lost and slots > ranks - lost:
                reason = f"the job lost {lost} rank(s) and the hosts allow {slots}"
            if reason is not None and job.poll() is None:
                LOG.info(f"supervise: {reason}: restarting from the newest checkpoints")
                _stop(job)
                return reason, slots
        return None, ranks

    def _finished(self) -> bool:
        try:
            return json.loads((self.out / "summary.json").read_text())["config"]["epochs"] >= self.epochs
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _wait_for_slots(self) -> int:
        while (slots := self.discover()) < self.min_ranks:
            time.sleep(self.poll)
        return slots

    def _lost_ranks(self) -> int:
        try:
            lines = (self.out / EVENTS_FILE).read_text().splitlines()
        except OSError:
            return 0
        return sum(len(json.loads(line).get("lost", [])) for line in lines if line.strip())

    def _log_restart(self, reason: str, ranks: int, wanted: int, resume: bool, seconds: float) -> None:
        record = {"reason": reason, "from_ranks": ranks, "to_ranks": wanted, "resume": resume, "seconds": seconds}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / RESTARTS_FILE, "a") as file:
            file.write(json.dumps(record) + "\n")


def _without_start_flags(flags: list[str]) -> list[str]:
    """``flags`` without ``--overwrite`` and ``--resume DIR`` (how the first start began)."""
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "--resume":
            skip = True
        elif flag != "--overwrite" and not flag.startswith("--resume="):
            kept.append(flag)
    return kept


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(job: subprocess.Popen) -> None:
    """SIGTERM to the launcher (it passes it on to mpirun, which ends the ranks), SIGKILL to the
    whole job past :data:`STOP_SECONDS`."""
    job.send_signal(signal.SIGTERM)
    try:
        job.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def script_slots(script: str) -> Callable[[], int]:
    """``discover`` for a host-discovery script; a script that fails counts as no slots."""

    def discover() -> int:
        done = subprocess.run([script], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            LOG.warning(f"supervise: {script} exited {done.returncode}: {done.stderr.strip()[-300:]}")
            return 0
        return parse_slots(done.stdout)

    return discover
