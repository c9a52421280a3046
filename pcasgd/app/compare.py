"""``pcasgd compare``: a grid of runs (modes x delays x seeds), a Markdown table and a figure.

Each cell is an ordinary ``pcasgd train`` run with its own run directory under ``--out``; the
simulator runs in this process, ``--backend mpi`` cells are launched with ``mpirun`` (one rank
per agent, plus the server for parameter-server modes).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pcasgd.algorithms.config import SERVER_MODES
from pcasgd.errors import ConfigError, TrainingFailedError


@dataclass(frozen=True)
class Cell:
    mode: str
    delay: str
    seed: int

    @property
    def name(self) -> str:
        safe_delay = "".join(c if c.isalnum() or c in "-." else "_" for c in self.delay)
        return f"{self.mode}__{safe_delay}__seed{self.seed}"


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    accuracy: float
    wall_seconds: float
    staleness_mean: float


def strip_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``argv`` without ``options`` and the values that follow each of them."""
    kept: list[str] = []
    skipping = False
    for token in argv:
        if token.startswith("--"):
            skipping = token.split("=", 1)[0] in options
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


def run_cell(
    cell: Cell,
    base_argv: list[str],
    out: Path,
    backend: str,
    agents: int,
    train: Callable[[list[str]], int],
) -> CellResult:
    folder = out / cell.name
    argv = [*base_argv, "--mode", cell.mode, "--delay", cell.delay, "--seed", str(cell.seed)]
    argv += ["--out", str(folder), "--overwrite"]
    if backend == "mpi":
        from pcasgd.runtime.launch import mpirun_path, open_mpi_env

        ranks = agents + (1 if cell.mode in SERVER_MODES else 0)
        command = [mpirun_path() or "mpirun", "-n", str(ranks), sys.executable, "-m", "pcasgd.cli", "train", *argv]
        code = subprocess.run(command, env=open_mpi_env(), check=False).returncode
    else:
        code = train(["train", *argv])
    summary_path = folder / "summary.json"
    if code != 0 or not summary_path.is_file():
        raise TrainingFailedError(f"the run {cell.name} failed (exit {code}); its files are in {folder}")
    summary = json.loads(summary_path.read_text())
    final = summary["final"]
    return CellResult(cell, final["test_accuracy"], final["wall_seconds"], summary["staleness"]["mean"])


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(results: list[CellResult], modes: Sequence[str], delays: Sequence[str]) -> str:
    """Final test accuracy of the averaged model (mean ± std over seeds), then wall time, per mode and delay."""
    lines = [
        "| mode | "
        + " | ".join(f"{delay}: accuracy" for delay in delays)
        + " | "
        + " | ".join(f"{delay}: wall s" for delay in delays)
        + " |",
        "|---|" + "---|" * (2 * len(delays)),
    ]
    for mode in modes:
        accuracy, wall = [], []
        for delay in delays:
            cells = [r for r in results if r.cell.mode == mode and r.cell.delay == delay]
            accuracy.append(_mean_std([r.accuracy for r in cells]))
            wall.append(f"{statistics.mean(r.wall_seconds for r in cells):.1f}")
        lines.append(f"| {mode} | " + " | ".join(accuracy) + " | " + " | ".join(wall) + " |")
    return "\n".join(lines) + "\n"


def plot_grid(results: list[CellResult], modes: Sequence[str], delays: Sequence[str], path: Path) -> None:
    from pcasgd.app.plots import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.4, 1.2 * len(modes) * len(delays) ** 0.5), 4.2))
    width = 0.8 / len(delays)
    for index, delay in enumerate(delays):
        means, stds = [], []
        for mode in modes:
            values = [r.accuracy for r in results if r.cell.mode == mode and r.cell.delay == delay]
            means.append(statistics.mean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [m + index * width for m in range(len(modes))]
        axes.bar(positions, means, width=width, yerr=stds, capsize=3, label=f"delay {delay}")
    axes.set_xticks([m + width * (len(delays) - 1) / 2 for m in range(len(modes))], modes, rotation=20)
    axes.set_ylabel("final test accuracy (averaged model)")
    low = min(r.accuracy for r in results)
    axes.set_ylim(max(0.0, low - 0.1), min(1.0, max(r.accuracy for r in results) + 0.03))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(delays), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(
    modes: Sequence[str],
    delays: Sequence[str],
    seeds: Sequence[int],
    base_argv: list[str],
    out: Path,
    backend: str,
    agents: int,
    train: Callable[[list[str]], int],
) -> str:
    """Run the grid; write ``compare.md``, ``compare.json`` and ``compare.png`` into ``out``; return the table."""
    if not modes or not delays or not seeds:
        raise ConfigError("compare needs at least one mode, one delay and one seed")
    out.mkdir(parents=True, exist_ok=True)
    results = [
        run_cell(Cell(mode, delay, seed), base_argv, out, backend, agents, train)
        for mode in modes
        for delay in delays
        for seed in seeds
    ]
    table = markdown_table(results, modes, delays)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(
        json.dumps([{**r.cell.__dict__, **{k: v for k, v in r.__dict__.items() if k != "cell"}} for r in results])
    )
    plot_grid(results, modes, delays, out / "compare.png")
    return table
