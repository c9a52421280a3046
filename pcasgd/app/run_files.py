"""The run directory: who may write it, how an earlier run is replaced, and writes that never
leave half a file (:mod:`pcasgd.app.files`).

One run at a time holds a directory: :class:`RunDirectory` takes an exclusive lock on
``OUT/.pcasgd.lock`` before it touches anything, so a second run started on the same ``--out``
is refused instead of mixing its records into the first one's. ``--overwrite`` moves the
earlier run's files aside (``OUT/.replaced/``) and deletes them only once the new run has
written its first record; a run that fails before that puts them back. ``--resume`` does the
same with the files it changes (the metrics past the checkpoint, the finished run's summary and
model): a resume that fails at once leaves the run as it was. Writes that fail (a full
disk) keep what was written before and raise :class:`~pcasgd.errors.RunFilesError`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from pcasgd.app.files import make_folder, write_atomically
from pcasgd.app.metrics import EVENTS_FILE, METRICS_FILES, MetricsWriter
from pcasgd.errors import ConfigError

RUN_FILES = (*METRICS_FILES, EVENTS_FILE, "summary.json", "model.pt", "stopped.log")
RUN_FOLDERS = ("checkpoints", "tensorboard")
LOCK = ".pcasgd.lock"
MARKER = ".pcasgd-run"  # written into every run directory: what --overwrite may replace
REPLACED = ".replaced"


class RunDirectory:
    """``out`` as the one process that writes a run's shared files (rank 0) holds it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock: IO[str] | None = None
        self._replaced: Path | None = None
        self._renewed: tuple[str, ...] = ()  # what the new run writes that a restore removes

    def open(self, overwrite: bool, resumed_records: list[dict[str, Any]] | None) -> None:
        """Lock ``out`` and prepare it: fresh (an earlier run refused unless ``overwrite``), or
        resumed (``resumed_records``: the metrics lines the checkpoint covers, which are kept)."""
        make_folder(self.out)
        self._take_lock()
        try:
            if resumed_records is None:
                self._prepare_fresh(overwrite)
            else:
                self._prepare_resumed(resumed_records)
        except BaseException:
            self._release_lock()
            raise

    def take_over(self) -> list[dict[str, Any]]:
        """Hold ``out`` as it is for a rank that records from now on (the recording rank died,
        ``--fault-tolerant``; the kernel released its lock) and return the records written so far.
        A line the dead rank left half-written is cut, and metrics.csv made to match."""
        self._take_lock()
        metrics = self.out / "metrics.jsonl"
        text = metrics.read_text() if metrics.exists() else ""
        whole = text[: text.rfind("\n") + 1]
        records = [json.loads(line) for line in whole.splitlines()]
        if whole != text:
            write_atomically(metrics, lambda path: path.write_text(whole))
        MetricsWriter.rewrite_csv(self.out, records)
        return records

    def started(self) -> None:
        """The new run has written its first record: the run it replaced is deleted now."""
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def close(self, succeeded: bool) -> None:
        """Release ``out``; a run that failed before its first record puts back the run it replaced."""
        try:
            if succeeded:
                self.started()
            elif self._replaced is not None:
                self._restore()
        finally:
            self._release_lock()

    # -- pieces ---------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        path = self.out / LOCK
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"another pcasgd run (pid {holder}) is writing to {self.out}; wait for it or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            (self.out / LOCK).unlink(missing_ok=True)
            self._lock.close()  # closing releases the lock
            self._lock = None

    def existing(self) -> list[str]:
        return [name for name in (*RUN_FILES, *RUN_FOLDERS) if (self.out / name).exists()]

    def _prepare_fresh(self, overwrite: bool) -> None:
        existing = self.existing()
        if existing and not overwrite:
            raise ConfigError(
                f"{self.out} already holds a run ({', '.join(existing)}); pass --overwrite, --resume, "
                "or choose another --out"
            )
        if existing and not self._holds_a_run():
            raise ConfigError(
                f"{self.out} holds {', '.join(existing)} but no pcasgd run wrote them (no {MARKER}, no pcasgd "
                "metrics): --overwrite replaces only pcasgd's runs; choose another --out or move them away"
            )
        self._put_aside(existing, copied=(), renewed=(*RUN_FILES, *RUN_FOLDERS))
        (self.out / MARKER).write_text("pcasgd\n")

    def _holds_a_run(self) -> bool:
        """Whether pcasgd wrote what is in ``out``: its marker, or (a run from before the marker)
        metrics whose first line is a pcasgd record."""
        if (self.out / MARKER).is_file():
            return True
        try:
            with open(self.out / "metrics.jsonl") as metrics:
                first = json.loads(metrics.readline())
        except (OSError, ValueError):
            return False
        return isinstance(first, dict) and {"epoch", "test_accuracy", "samples"} <= first.keys()

    def _prepare_resumed(self, records: list[dict[str, Any]]) -> None:
        """Keep the metrics of the epochs the checkpoint covers; drop the rest and the final files
        (kept aside until the resumed run's first record)."""
        changed = [name for name in (*METRICS_FILES, "summary.json", "model.pt") if (self.out / name).exists()]
        self._put_aside(changed, copied=METRICS_FILES, renewed=(*METRICS_FILES, "summary.json", "model.pt"))
        text = "".join(json.dumps(record) + "\n" for record in records)
        write_atomically(self.out / "metrics.jsonl", lambda path: path.write_text(text))
        MetricsWriter.rewrite_csv(self.out, records)

    def _put_aside(self, names: list[str], copied: tuple[str, ...], renewed: tuple[str, ...]) -> None:
        """Move ``names`` (copy those in ``copied``, which the new run goes on writing) into
        ``OUT/.replaced/``; a restore removes ``renewed`` and puts them back."""
        replaced = self.out / REPLACED
        if replaced.exists():
            raise ConfigError(
                f"{replaced} holds the files of a run that an interrupted --overwrite or --resume replaced: move "
                "them back into the run directory, or delete the folder"
            )
        if not names:
            return
        replaced.mkdir()
        for name in names:
            if name in copied:
                shutil.copy2(self.out / name, replaced / name)
            else:
                os.replace(self.out / name, replaced / name)
        self._replaced, self._renewed = replaced, renewed

    def _restore(self) -> None:
        for name in self._renewed:
            new = self.out / name
            if new.is_dir():
                shutil.rmtree(new)
            else:
                new.unlink(missing_ok=True)
        put_back_replaced(self.out)
        self._replaced = None


def put_back_replaced(out: Path) -> list[str]:
    """Move the files an interrupted ``--overwrite`` or ``--resume`` put aside back into ``out``
    (over what the interrupted run wrote in their place); return their names."""
    replaced = out / REPLACED
    if not replaced.is_dir():
        return []
    names = sorted(old.name for old in replaced.iterdir())
    for name in names:
        os.replace(replaced / name, out / name)
    replaced.rmdir()
    return names
