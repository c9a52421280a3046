"""The run directory: who may write it, how an earlier run is replaced, and writes that never
leave half a file (:mod:`pcasgd.app.files`).

One run at a time holds a directory: :class:`RunDirectory` takes an exclusive lock on
``OUT/.pcasgd.lock`` before it touches anything, so a second run started on the same ``--out``
is refused instead of mixing its records into the first one's. ``--overwrite`` moves the
earlier run's files aside (``OUT/.replaced/``) and deletes them only once the new run has
written its first record; a run that fails before that puts them back. Writes that fail (a full
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
REPLACED = ".replaced"


class RunDirectory:
    """``out`` as the one process that writes a run's shared files (rank 0) holds it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock: IO[str] | None = None
        self._replaced: Path | None = None

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
        replaced = self.out / REPLACED
        if replaced.exists():
            raise ConfigError(
                f"{replaced} holds the files of a run that an interrupted --overwrite replaced: move them back "
                "into the run directory, or delete the folder"
            )
        if existing:
            replaced.mkdir()
            for name in existing:
                os.replace(self.out / name, replaced / name)
            self._replaced = replaced

    def _prepare_resumed(self, records: list[dict[str, Any]]) -> None:
        """Keep the metrics of the epochs the checkpoint covers; drop the rest and the final files."""
        text = "".join(json.dumps(record) + "\n" for record in records)
        write_atomically(self.out / "metrics.jsonl", lambda path: path.write_text(text))
        MetricsWriter.rewrite_csv(self.out, records)
        for name in ("summary.json", "model.pt"):
            (self.out / name).unlink(missing_ok=True)

    def _restore(self) -> None:
        replaced = self._replaced
        for name in (*RUN_FILES, *RUN_FOLDERS):
            new = self.out / name
            if new.is_dir():
                shutil.rmtree(new)
            else:
                new.unlink(missing_ok=True)
        for old in replaced.iterdir():
            os.replace(old, self.out / old.name)
        replaced.rmdir()
        self._replaced = None
