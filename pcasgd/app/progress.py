"""Per-epoch progress: a redrawn bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO

BAR_WIDTH = 24


class EpochProgress:
    def __init__(self, epochs: int, stream: TextIO | None = None) -> None:
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()

    def line(self, record: dict[str, Any]) -> str:
        epoch = record["epoch"]
        eta = record["wall_seconds"] / epoch * (self.epochs - epoch)
        loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        staleness = "-" if record["staleness_mean"] is None else f"{record['staleness_mean']:.2f}"
        text = (
            f"epoch {epoch:.4g}/{self.epochs}  acc {record['test_accuracy']:.4f}  loss {loss}  "
            f"consensus {record['consensus_distance_mean']:.3g}  staleness {staleness}"
            f"  {record['samples_per_second']:.0f} samples/s  {record['wall_seconds']:.1f}s  eta {eta:.0f}s"
        )
        if record.get("age_mean") is not None:  # decentralized modes: the ages of the snapshots mixed
            text += f"  age {record['age_mean']:.2f}/{record['age_max']:.1f}"
        if record.get("predict_fraction") is not None:
            text += f"  predict {record['predict_fraction']:.2f}"
        if record.get("prediction_ratio_median") is not None:  # how near the predictions came (below 1: nearer)
            text += f"  ratio <{record['prediction_ratio_median']:.2f}"
        return text

    def __call__(self, record: dict[str, Any]) -> None:
        if self.interactive:
            done = round(BAR_WIDTH * record["epoch"] / self.epochs)
            bar = "#" * done + "." * (BAR_WIDTH - done)
            end = "\n" if record["epoch"] == self.epochs else ""
            self.stream.write(f"\r[{bar}] {self.line(record)}\033[K{end}")
        else:
            self.stream.write(self.line(record) + "\n")
        self.stream.flush()
