"""Per-epoch records written as they come: JSON lines, CSV, and optionally TensorBoard; and the
run summary's age histograms."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from pcasgd.app.files import append_text
from pcasgd.engine import RATIO_BIN
from pcasgd.errors import ConfigError
from pcasgd.protocol.ages import AGE_BIN, histogram_median

METRICS_FILES = ("metrics.jsonl", "metrics.csv")
EVENTS_FILE = "events.jsonl"  # --fault-tolerant: one line per recovery from a dead rank


class MetricsWriter:
    """Appends each record to ``metrics.jsonl`` and ``metrics.csv`` (scalars only) in ``out``.

    ``tensorboard``: also write the scalars as TensorBoard events under ``out/tensorboard``.
    """

    def __init__(self, out: Path, tensorboard: bool = False) -> None:
        self.out = out
        self._columns: list[str] | None = None
        self._board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ConfigError(f"--tensorboard needs the tensorboard package ({error})") from None
            self._board = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        append_text(self.out / "metrics.jsonl", json.dumps(record) + "\n")
        scalars = self._write_csv(record)
        if self._board is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._board.add_scalar(key, value, record["epoch"])
            self._board.flush()

    def write_event(self, event: dict[str, Any]) -> None:
        append_text(self.out / EVENTS_FILE, json.dumps(event) + "\n")

    @staticmethod
    def rewrite_csv(out: Path, records: list[dict[str, Any]]) -> None:
        """``metrics.csv`` holding exactly ``records`` (a resumed run drops the epochs it redoes)."""
        (out / "metrics.csv").unlink(missing_ok=True)
        writer = MetricsWriter(out)
        for record in records:
            writer._write_csv(record)

    def _write_csv(self, record: dict[str, Any]) -> dict[str, Any]:
        scalars = {key: value for key, value in record.items() if not isinstance(value, (dict, list))}
        if self._columns is None:
            csv_path = self.out / "metrics.csv"
            if csv_path.is_file() and csv_path.stat().st_size:  # a resumed run: keep the header it has
                with csv_path.open(newline="") as handle:
                    self._columns = next(csv.reader(handle))
            else:
                self._columns = list(scalars)
                append_text(csv_path, _csv_line(self._columns))
        append_text(self.out / "metrics.csv", _csv_line([scalars.get(column, "") for column in self._columns]))
        return scalars

    def close(self) -> None:
        if self._board is not None:
            self._board.close()


def _csv_line(values: list[Any]) -> str:
    text = io.StringIO()
    csv.writer(text).writerow(values)
    return text.getvalue()


def age_summary(ages: dict[int, Counter[float]]) -> dict[str, Any]:
    """The neighbour-step ages of every snapshot mixed (decentralized modes): all together and by
    the neighbour that published them, as binned histograms (bins of ``AGE_BIN`` steps, keyed by
    their lower edge) with the upper edge of the median's bin."""
    everything: Counter[float] = Counter()
    for histogram in ages.values():
        everything.update(histogram)

    def described(histogram: Counter[float]) -> dict[str, Any]:
        return {
            "median_below": histogram_median(histogram),
            "histogram": {str(k): v for k, v in sorted(histogram.items())},
        }

    return {
        "bin": AGE_BIN,
        **described(everything),
        "by_source": {str(source): described(histogram) for source, histogram in sorted(ages.items())},
    }


def prediction_summary(ratios: Counter[float]) -> dict[str, Any]:
    """The predict step's quality over the run (pcasgd family): how many predictions were scored
    against the neighbour's later snapshot, the upper edge of the median ratio's bin
    (``|x_hat - x| / |x_stale - x|``, below 1: the prediction helped) and the binned ratios."""
    return {
        "bin": RATIO_BIN,
        "scored": sum(ratios.values()),
        "median_below": histogram_median(ratios, RATIO_BIN),
        "histogram": {str(k): v for k, v in sorted(ratios.items())},
    }
