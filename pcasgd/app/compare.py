"""``pcasgd compare``: a grid of runs (variants x delays x seeds), a Markdown table and a figure.

A variant is a named set of ``pcasgd train`` flags (``--modes M`` gives the variants
``M = --mode M``). Each cell is an ordinary ``pcasgd train`` run with its own run directory
under ``--out``; the simulator runs in this process, ``--backend mpi`` cells are launched with
``mpirun`` (one rank per agent, plus the server for parameter-server modes).

A cell whose run fails during training (it diverged, exit 1) is counted as failed and the grid
goes on; a cell already finished with the same effective configuration (an interrupted grid
started again; not when a flag or a default changed) is read back instead of run again.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pcasgd import log
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app.files import make_folder
from pcasgd.dispatch import ranks_needed
from pcasgd.errors import ConfigError

LOG = log.get("compare")

EXIT_TRAINING_FAILED = 1  # pcasgd train's exit status for a run that failed while training (e.g. diverged)


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...]

    @property
    def mode(self) -> str | None:
        """The mode the flags set (the last ``--mode``), or None for the default mode."""
        modes = [self.flags[i + 1] for i, flag in enumerate(self.flags[:-1]) if flag == "--mode"]
        modes += [flag.split("=", 1)[1] for flag in self.flags if flag.startswith("--mode=")]
        return modes[-1] if modes else None


@dataclass(frozen=True)
class Cell:
    variant: Variant
    delay: str
    seed: int

    @property
    def name(self) -> str:
        return f"{folder_part(self.variant.name)}__{folder_part(self.delay)}__seed{self.seed}"


def folder_part(text: str) -> str:
    """``text`` as part of a run folder's name."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _check_distinct(kind: str, values: Sequence[object], folders: bool = True) -> None:
    """Two ``values`` that are equal, or (``folders``) that name the same run folder, are refused:
    their cells would share a folder, each run overwriting the other's."""
    seen: dict[str, object] = {}
    for value in values:
        key = folder_part(str(value)) if folders else str(value)
        if key in seen:
            same = "is repeated" if seen[key] == value else f"and {seen[key]!r} both name the run folders {key!r}"
            raise ConfigError(f"{kind} {value!r} {same}: each cell needs its own")
        seen[key] = value


@dataclass(frozen=True)
class CellResult:
    """Final figures of one cell (NaN and ``failed`` when the run failed while training)."""

    variant: str
    delay: str
    seed: int
    failed: bool
    accuracy: float = math.nan
    worst_agent_accuracy: float = math.nan
    consensus_distance: float = math.nan
    staleness_mean: float = math.nan
    staleness_max: int = 0
    wall_seconds: float = math.nan


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


#: What compare sets for every cell itself (``--config``: its settings go to every cell, so a
#: variant names its own settings as flags, which the up-front check then sees).
PER_CELL = ("--delay", "--seed", "--out", "--overwrite", "--resume", "--config")


def parse_variant(text: str) -> Variant:
    """``NAME=FLAGS`` (flags in shell syntax) as a :class:`Variant`."""
    name, equals, flags = text.partition("=")
    if not equals or not name.strip():
        raise ConfigError(f"--variant {text!r}: expected NAME=FLAGS, e.g. 'theta 0.25=--theta 0.25'")
    try:
        split = tuple(shlex.split(flags))
    except ValueError as error:  # an unclosed quote
        raise ConfigError(f"--variant {text!r}: {error}") from None
    given = {flag.split("=", 1)[0] for flag in split if flag.startswith("--") and len(flag) > 2}
    # what pcasgd train would take these for, abbreviations included (--resum is --resume)
    reserved = sorted({option for option in PER_CELL for flag in given if option.startswith(flag)})
    if reserved:
        raise ConfigError(f"--variant {name!r} sets {', '.join(reserved)}: compare sets those per cell")
    return Variant(name.strip(), split)


def cell_argv(cell: Cell, base_argv: Sequence[str], out: Path) -> list[str]:
    """The ``pcasgd train`` flags of ``cell`` (after ``train``)."""
    argv = [*base_argv, *cell.variant.flags, "--delay", cell.delay, "--seed", str(cell.seed)]
    return [*argv, "--out", str(out / cell.name), "--overwrite"]


def finished_summary(folder: Path, config: dict) -> dict | None:
    """The summary of the run in ``folder`` if it finished with configuration ``config`` (a
    ``summary.json`` config record: changed flags or defaults do not match), else None."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("config") == config else None


def run_cell(
    cell: Cell,
    base_argv: list[str],
    out: Path,
    backend: str,
    agents: int,
    train: Callable[[list[str]], int],
    configure: Callable[[list[str]], dict],
) -> CellResult:
    folder = out / cell.name
    argv = cell_argv(cell, base_argv, out)
    summary = finished_summary(folder, configure(argv))
    if summary is None:
        if backend == "mpi":
            from pcasgd.runtime.launch import mpirun_path, open_mpi_env

            family = AlgorithmConfig(mode=cell.variant.mode or AlgorithmConfig().mode).family
            ranks = ranks_needed(family, agents)
            command = [mpirun_path() or "mpirun", "-n", str(ranks), sys.executable, "-m", "pcasgd.cli", "train"]
            code = subprocess.run([*command, *argv], env=open_mpi_env(), check=False).returncode
        else:
            code = train(["train", *argv])
        if code == EXIT_TRAINING_FAILED:
            LOG.warning(f"compare: cell {cell.name} failed while training; the grid goes on")
            return CellResult(cell.variant.name, cell.delay, cell.seed, failed=True)
        if code != 0 or not (folder / "summary.json").is_file():
            raise ConfigError(f"the run {cell.name} did not start (exit {code}); its messages are above")
        summary = json.loads((folder / "summary.json").read_text())
    final = summary["final"]
    return CellResult(
        cell.variant.name,
        cell.delay,
        cell.seed,
        failed=False,
        accuracy=final["test_accuracy"],
        worst_agent_accuracy=final["agent_accuracy_min"],
        consensus_distance=final["consensus_distance_mean"],
        staleness_mean=summary["staleness"]["mean"],
        staleness_max=summary["staleness"]["max"],
        wall_seconds=final["wall_seconds"],
    )


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(results: list[CellResult], variants: Sequence[str], delays: Sequence[str]) -> str:
    """One row per variant and delay: final figures, mean ± std over the seeds that finished."""
    lines = [
        "| variant | delay | test accuracy (evaluated model) | worst agent | consensus distance "
        "| staleness mean / max | wall s | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        for delay in delays:
            cells = [r for r in results if r.variant == variant and r.delay == delay]
            done = [r for r in cells if not r.failed]
            top = max((r.staleness_max for r in done), default=0)
            lines.append(
                f"| {variant} | {delay} | {_spread([r.accuracy for r in done], 4)} | "
                f"{_spread([r.worst_agent_accuracy for r in done], 4)} | "
                f"{_spread([r.consensus_distance for r in done], 3)} | "
                f"{_spread([r.staleness_mean for r in done], 2)} / {top} | "
                f"{_spread([r.wall_seconds for r in done], 1)} | {len(cells) - len(done)}/{len(cells)} |"
            )
    return "\n".join(lines) + "\n"


def draw_grid(axes, results: list[CellResult], variants: Sequence[str], delays: Sequence[str]) -> None:
    """Bars of the final accuracy (mean ± std over the seeds that finished) per variant and delay."""
    width = 0.8 / len(delays)
    for index, delay in enumerate(delays):
        means, stds = [], []
        for variant in variants:
            values = [r.accuracy for r in results if r.variant == variant and r.delay == delay and not r.failed]
            means.append(statistics.mean(values) if values else 0.0)
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [m + index * width for m in range(len(variants))]
        axes.bar(positions, means, width=width, yerr=stds, capsize=3, label=f"delay {delay}")
    axes.set_xticks([m + width * (len(delays) - 1) / 2 for m in range(len(variants))], variants, rotation=20)
    axes.set_ylabel("final test accuracy (evaluated model)")
    finished = [r.accuracy for r in results if not r.failed] or [0.0, 1.0]
    axes.set_ylim(max(0.0, min(finished) - 0.1), min(1.0, max(finished) + 0.03))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(delays), frameon=False)


def plot_grid(results: list[CellResult], variants: Sequence[str], delays: Sequence[str], path: Path) -> None:
    from pcasgd.app.plots import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.4, 1.2 * len(variants) * len(delays) ** 0.5), 4.2))
    draw_grid(axes, results, variants, delays)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(
    variants: Sequence[Variant],
    delays: Sequence[str],
    seeds: Sequence[int],
    base_argv: list[str],
    out: Path,
    backend: str,
    agents: int,
    train: Callable[[list[str]], int],
    configure: Callable[[list[str]], dict],
) -> str:
    """Run the grid; write ``compare.md``, ``compare.json`` and ``compare.png`` into ``out``; return the table.

    ``train`` runs ``pcasgd train`` in this process (simulator cells); ``configure`` gives the
    summary config record a cell's flags make, which decides whether a finished cell is reused.
    """
    if not variants or not delays or not seeds:
        raise ConfigError("compare needs at least one mode or variant, one delay and one seed")
    names = [variant.name for variant in variants]
    _check_distinct("variant", names)
    _check_distinct("delay", list(delays))
    _check_distinct("seed", list(seeds), folders=False)
    make_folder(out)
    results = [
        run_cell(Cell(variant, delay, seed), base_argv, out, backend, agents, train, configure)
        for variant in variants
        for delay in delays
        for seed in seeds
    ]
    table = markdown_table(results, names, delays)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    plot_grid(results, names, delays, out / "compare.png")
    return table
