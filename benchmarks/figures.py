"""The figures of docs/RESULTS.md, drawn from the JSON the benchmarks write.

    python benchmarks/figures.py --protocol runs/protocol.json [more.json...] --real runs/real_compute.json \\
        --tta runs/tta/time_to_accuracy.json [more.json...] --out docs/figures \\
        --accuracy "4 agents=runs/accuracy-4/modes" "8 agents=runs/accuracy-8/modes" \\
        --claims "DC-ASGD, 4 workers=runs/claims/dcasgd-4" ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcasgd.app.compare import CellResult, draw_grid  # noqa: E402
from pcasgd.app.plots import _pyplot  # noqa: E402


def protocol_cells(paths: list[Path]) -> list[dict]:
    """Cells of several protocol.json files; a later file's cell replaces an earlier one's."""
    cells: dict[tuple, dict] = {}
    for path in paths:
        for cell in json.loads(path.read_text())["cells"]:
            cells[cell["mode"], cell["ranks"], cell["straggler"]] = cell
    return list(cells.values())


def protocol_pivot(cells: list[dict]) -> str:
    """Markdown: ratio to the ideal per mode (rows) and ranks x straggler (columns)."""
    columns = sorted({(c["ranks"], c["straggler"]) for c in cells})
    modes = list(dict.fromkeys(c["mode"] for c in cells))
    ratio = {(c["mode"], c["ranks"], c["straggler"]): c["ratio"] for c in cells}
    lines = ["| mode | " + " | ".join(f"{r} ranks, {f:g}x" for r, f in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for mode in modes:
        values = [f"{ratio[mode, r, f]:.3f}" if (mode, r, f) in ratio else "-" for r, f in columns]
        lines.append(f"| {mode} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def protocol_figure(cells: list[dict], ranks: int, path: Path) -> None:
    """Iterations/s as a share of the ideal, per mode, for each straggler factor at ``ranks`` ranks."""
    plt = _pyplot()
    chosen = [c for c in cells if c["ranks"] == ranks]
    modes = list(dict.fromkeys(c["mode"] for c in chosen))
    factors = sorted({c["straggler"] for c in chosen})
    figure, axes = plt.subplots(figsize=(8.0, 3.8))
    width = 0.8 / len(factors)
    for index, factor in enumerate(factors):
        ratios = [next((c["ratio"] for c in chosen if c["mode"] == m and c["straggler"] == factor), 0.0) for m in modes]
        label = "no straggler" if factor == 1 else f"one rank {factor:g}x slower"
        axes.bar([m + index * width for m in range(len(modes))], ratios, width=width, label=label)
    axes.axhline(0.9, color="black", linewidth=0.8, linestyle="--")
    axes.set_xticks([m + width * (len(factors) - 1) / 2 for m in range(len(modes))], modes, rotation=25)
    axes.set_ylabel("iterations/s / ideal")
    axes.set_ylim(0, 1.1)
    axes.set_title(f"{ranks} ranks; ideal: sum 1/T_i (asynchronous), N / max T_i (waiting)", fontsize=9)
    axes.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=len(factors), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def real_compute_figure(rows: list[dict], path: Path) -> None:
    """Samples/s of each contender, with and without the straggler, per workload."""
    plt = _pyplot()
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    figure, all_axes = plt.subplots(1, len(workloads), figsize=(5.0 * len(workloads), 3.8), squeeze=False)
    for axes, workload in zip(all_axes[0], workloads, strict=True):
        chosen = [r for r in rows if r["workload"] == workload]
        contenders = list(dict.fromkeys(r["contender"] for r in chosen))
        factors = sorted({r["straggler"] for r in chosen})
        width = 0.8 / len(factors)
        for index, factor in enumerate(factors):
            rates = [
                next((r["rate"] for r in chosen if r["contender"] == c and r["straggler"] == factor), 0.0)
                for c in contenders
            ]
            label = "no straggler" if factor == 1 else f"rank 1 {factor:g}x slower"
            axes.bar([m + index * width for m in range(len(contenders))], rates, width=width, label=label)
        axes.set_xticks([m + width * (len(factors) - 1) / 2 for m in range(len(contenders))], contenders, rotation=25)
        axes.set_ylabel("samples/s (2 cores)")
        axes.set_title(workload, fontsize=9)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def tta_results(paths: list[Path]) -> dict:
    """Several time-to-accuracy results (one per straggler setting, or per link speed) as one:
    their settings together, keyed by panel title (the results' folder names tell apart the same
    setting measured in several); they must share the target, or the panels would not compare."""
    results = [json.loads(path.read_text()) for path in paths]
    targets = {result["target"] for result in results}
    if len(targets) != 1:
        raise SystemExit(f"figures.py: --tta results have different targets {sorted(targets)}")
    keys = [straggler for result in results for straggler in result["settings"]]
    settings = {}
    for path, result in zip(paths, results, strict=True):
        for straggler, setting in result["settings"].items():
            title = f"straggler {straggler}x" if straggler != "1" else "no straggler"
            settings[f"{path.parent.name}, {title}" if keys.count(straggler) > 1 else title] = setting
    return {**results[0], "settings": settings}


def time_to_accuracy_figure(results: dict, path: Path) -> None:
    """Test accuracy against wall time, one panel per straggler setting, one colour per method (at
    its tuned learning rate, every seed), with the target marked."""
    plt = _pyplot()
    settings = results["settings"]
    figure, all_axes = plt.subplots(1, len(settings), figsize=(6.4 * len(settings), 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes, (title, setting) in zip(all_axes[0], settings.items(), strict=True):
        for index, (method, row) in enumerate(setting.items()):
            for seed, curve in enumerate(row["curves"]):
                if curve:
                    seconds, accuracy = zip(*curve, strict=True)
                    label = f"{method} (lr {row['lr']:g})" if seed == 0 else None
                    axes.plot(seconds, accuracy, color=colours[index % len(colours)], alpha=0.75, label=label)
        axes.axhline(results["target"], color="black", linewidth=0.7, linestyle=":")
        axes.set_title(title, fontsize=10, loc="left")
        axes.set_xlabel("wall time (s)")
        axes.set_ylabel("test accuracy (averaged model)")
        axes.set_ylim(max(0.0, results["target"] - 0.25), None)  # the approach to the target
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def grids_figure(grids: list[str], path: Path) -> None:
    """One panel per ``TITLE=FOLDER`` of a ``pcasgd compare`` run, drawn from its compare.json."""
    plt = _pyplot()
    figure, all_axes = plt.subplots(len(grids), 1, figsize=(11.0, 3.6 * len(grids)), squeeze=False)
    for axes, grid in zip(all_axes[:, 0], grids, strict=True):
        title, _, folder = grid.partition("=")
        results = [CellResult(**cell) for cell in json.loads((Path(folder) / "compare.json").read_text())]
        variants = list(dict.fromkeys(r.variant for r in results))
        delays = list(dict.fromkeys(r.delay for r in results))
        draw_grid(axes, results, variants, delays)
        axes.set_title(title, fontsize=10, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, nargs="+", help="protocol.json files (later ones win)")
    parser.add_argument("--real", type=Path)
    parser.add_argument("--tta", type=Path, nargs="+", help="time_to_accuracy.json files, one panel per setting")
    parser.add_argument("--accuracy", nargs="+", metavar="TITLE=FOLDER", help="compare runs, one panel each")
    parser.add_argument("--claims", nargs="+", metavar="TITLE=FOLDER", help="compare runs, one panel each")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.protocol:
        cells = protocol_cells(args.protocol)
        print(protocol_pivot(cells) + "\n")
        protocol_figure(cells, max(c["ranks"] for c in cells), args.out / "protocol.png")
    if args.real:
        real_compute_figure(json.loads(args.real.read_text()), args.out / "real_compute.png")
    if args.tta:
        time_to_accuracy_figure(tta_results(args.tta), args.out / "time_to_accuracy.png")
    if args.accuracy:
        grids_figure(args.accuracy, args.out / "accuracy_under_delay.png")
    if args.claims:
        grids_figure(args.claims, args.out / "seed_claims.png")
    for path in sorted(args.out.glob("*.png")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
