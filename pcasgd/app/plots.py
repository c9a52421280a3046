"""PNG figures of finished runs (``pcasgd plot``): accuracy by epoch and by wall time, consensus
distance, staleness histogram. One line (or bar group) per run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pcasgd.app.files import make_folder
from pcasgd.errors import ConfigError

# What each epoch record must hold for the figures.
RECORD_KEYS = ("epoch", "wall_seconds", "test_accuracy", "consensus_distance_mean")
FIGURES = ("accuracy_epoch.png", "accuracy_time.png", "consensus.png", "staleness.png")


def read_run(folder: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """``(label, per-epoch records, summary or None)`` of a run directory."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{folder} is not a run directory (no metrics.jsonl)")
    try:
        records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        summary_file = folder / "summary.json"
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
    except (ValueError, OSError) as error:  # JSON errors and undecodable bytes are ValueErrors
        raise ConfigError(f"{folder}: a metrics or summary file is corrupt ({error})") from None
    if not records:
        raise ConfigError(f"{folder}/metrics.jsonl holds no epoch yet")
    for number, record in enumerate(records, 1):
        missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise ConfigError(f"{metrics} line {number} is not a pcasgd epoch record (it lacks {', '.join(missing)})")
    if summary is not None and not isinstance(summary, dict):
        raise ConfigError(f"{folder}/summary.json is not a pcasgd summary")
    return folder.name, records, summary


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ConfigError(f"plots need matplotlib ({error}); pip install 'pcasgd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(folders: list[Path], out: Path) -> list[Path]:
    """Write the figures into ``out``; return their paths."""
    runs = [read_run(folder) for folder in folders]
    plt = _pyplot()
    make_folder(out)
    written = []
    panels = [
        ("epoch", "test_accuracy", "epoch", "test accuracy (averaged model)"),
        ("wall_seconds", "test_accuracy", "wall time (s)", "test accuracy (averaged model)"),
        ("epoch", "consensus_distance_mean", "epoch", "mean consensus distance ||x_i - x_bar||"),
    ]
    for name, (x_key, y_key, x_label, y_label) in zip(FIGURES, panels, strict=False):
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for label, records, _ in runs:
            axes.plot([r[x_key] for r in records], [r[y_key] for r in records], marker="o", markersize=3, label=label)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        written.append(out / name)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / len(runs)
    for index, (label, _, summary) in enumerate(runs):
        histogram = (summary or {}).get("staleness", {}).get("histogram", {})
        total = sum(histogram.values()) or 1
        values = sorted((int(k), v / total) for k, v in histogram.items())
        axes.bar([k + index * width for k, _ in values], [v for _, v in values], width=width, label=label)
    axes.set_xlabel("staleness (iterations)")
    axes.set_ylabel("fraction of reads / pushes")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / FIGURES[3], dpi=120)
    plt.close(figure)
    written.append(out / FIGURES[3])
    return written
