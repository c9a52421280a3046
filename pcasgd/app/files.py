"""Writing run files so that a failure (a full disk) never leaves half a file or a stray temporary."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pcasgd.errors import ConfigError, RunFilesError


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` then rename it to ``path``: ``path`` is whole or absent, never half-written."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):  # a name too long to write is too long to remove
            temporary.unlink(missing_ok=True)
        raise RunFilesError(f"cannot write {path}: {reason(error, path)}") from None


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path``; if that fails, cut the file back to what it held before."""
    before = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a", newline="") as handle:
            handle.write(text)
    except OSError as error:
        with contextlib.suppress(OSError):  # the file may not exist at all
            os.truncate(path, before)
        raise RunFilesError(f"cannot write {path}: {reason(error)}") from None


def reason(error: BaseException, path: Path | None = None) -> str:
    """Why a write failed, in words: an OSError's own; for torch.save's RuntimeError the free space."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if path is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(path.parent).free
            return f"the write failed with {free} bytes free on that file system ({str(error).splitlines()[0]})"
    return str(error)


def make_folder(path: Path) -> None:
    """``mkdir -p path``, with a clear error where it cannot be (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the folder {path}: {reason(error)}") from None
