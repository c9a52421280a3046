"""Checkpoints of a run, one file per rank and epoch, and choosing which to resume from.

Layout: ``RUN/checkpoints/rank-R/epoch-EEEEE.pt``. Each file is written to a temporary name and
renamed, so a file under its final name is always whole: a crash mid-write leaves the previous
checkpoint as the newest. Each rank keeps its newest :data:`KEEP` checkpoints.

A checkpoint holds the engine's whole state (algorithm state: weights, momentum, predictor
history, MeanSquare; snapshot rings or in-flight reductions; counters), the data position and
RNG states of the batch oracle, torch's RNG, the model's buffers, the metrics so far (rank 0)
and the effective configuration, which a resume compares with its own.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pcasgd.app.files import write_atomically
from pcasgd.errors import ConfigError

KEEP = 2
FORMAT = 2  # 2: the parameter server's state is one VersionedServer
# Settings a resumed run may change: they do not alter what was computed so far.
RESUMABLE = (
    "epochs",
    "deadline",
    "startup_deadline",
    "progress_thread",
    "tensorboard",
    "host_staging",
    "device",
    "checkpoint_every",
    "eval_every",
    "rejoin",
)
# What every checkpoint holds (the application's state besides the engine's).
FIELDS = ("epoch", "config", "engine", "oracle", "buffers", "torch_rng", "records", "wall_seconds", "samples")
FILE = re.compile(r"epoch-(\d+)\.pt")


def rank_folder(out: Path, rank: int) -> Path:
    return out / "checkpoints" / f"rank-{rank}"


def available_epochs(out: Path, rank: int) -> list[int]:
    """Epochs this rank holds a complete checkpoint of, oldest first."""
    folder = rank_folder(out, rank)
    if not folder.is_dir():
        return []
    return sorted(int(match.group(1)) for path in folder.iterdir() if (match := FILE.fullmatch(path.name)))


def checkpointed_ranks(out: Path) -> list[int]:
    """The ranks that hold at least one complete checkpoint in ``out``, in order."""
    folders = (out / "checkpoints").glob("rank-*")
    ranks = (int(f.name.removeprefix("rank-")) for f in folders if f.name.removeprefix("rank-").isdigit())
    return sorted(rank for rank in ranks if available_epochs(out, rank))


def newest_readable(out: Path, rank: int) -> dict[str, Any] | None:
    """This rank's newest checkpoint that loads whole (None: none does)."""
    for epoch in reversed(available_epochs(out, rank)):
        try:
            return load(out, rank, epoch)
        except ConfigError:
            continue
    return None


def save(out: Path, rank: int, epoch: int, payload: dict[str, Any]) -> Path:
    folder = rank_folder(out, rank)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:05d}.pt"
    write_atomically(path, lambda temporary: torch.save({"format": FORMAT, "epoch": epoch, **payload}, temporary))
    for old in available_epochs(out, rank)[:-KEEP]:
        (folder / f"epoch-{old:05d}.pt").unlink(missing_ok=True)
    return path


def load(out: Path, rank: int, epoch: int) -> dict[str, Any]:
    path = rank_folder(out, rank) / f"epoch-{epoch:05d}.pt"
    try:
        payload = torch.load(path, weights_only=False)  # our own file: it holds the engine's objects
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ConfigError(f"checkpoint {path} cannot be read: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a pcasgd checkpoint of format {FORMAT}")
    missing = [name for name in FIELDS if name not in payload]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by this pcasgd")
    return payload


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two effective configurations, besides :data:`RESUMABLE` settings."""
    found = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE:
            continue
        before, now = saved.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(now, dict):
            found += differences(before, now, f"{prefix}{key}.")
        elif before != now:
            found.append(f"{prefix}{key}: {before!r} in the checkpoint, {now!r} now")
    return found


def check_same_run(payload: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    found = differences(payload["config"], current)
    if found:
        raise ConfigError(f"the checkpoint in {where} comes from another configuration: " + "; ".join(found))
