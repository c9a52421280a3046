"""The benchmarks behind docs/RESULTS.md: their arithmetic on made-up stamps, and each one run
for real on a small setting (what they print is measured, so only what holds under load is asserted)."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.figures import protocol_cells, protocol_pivot
from benchmarks.protocol import measure
from benchmarks.real_compute import samples_per_second
from tests.mpi_support import PYTHON, ROOT, mpi_env, needs_mpirun


def stamps(period: float, until: float) -> list[float]:
    return [k * period for k in range(1, int(until / period) + 1)]


def rank_record(rank: int, period: float, synchronous: bool = False, server: bool = False) -> dict:
    return {
        "rank": rank,
        "step_seconds": period,
        "stamps": [] if server and rank == 0 else stamps(period, 10.0),
        "exchange_seconds": [],
        "synchronous": synchronous,
        "server": server,
    }


def test_protocol_rate_and_ideal_from_stamps():
    asynchronous = measure([rank_record(0, 0.1), rank_record(1, 0.4)])
    assert asynchronous["ideal"] == pytest.approx(12.5) and asynchronous["rate"] == pytest.approx(12.5)
    waiting = measure([rank_record(0, 0.4, synchronous=True), rank_record(1, 0.4, synchronous=True)])
    assert waiting["ideal"] == pytest.approx(5.0) and waiting["ratio"] == pytest.approx(1.0)
    # A parameter server's rank 0 computes nothing: only the workers count.
    served = [rank_record(0, 0.1, server=True), rank_record(1, 0.2, server=True), rank_record(2, 0.4, server=True)]
    served = measure(served)
    assert served["ideal"] == pytest.approx(7.5) and served["ratio"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="raise --seconds"):
        measure([{**rank_record(0, 0.1), "stamps": [0.1, 0.2]}, rank_record(1, 0.1)])


def test_real_compute_rate_counts_the_common_span():
    total, per_rank = samples_per_second([stamps(0.125, 10.0), stamps(0.25, 6.0)], batch_size=10)
    # Common span (0.25 + 0.5 s settling, 6.0]: rank 0 finishes 42 steps there, rank 1 21.
    assert per_rank == pytest.approx([420 / 5.25, 210 / 5.25]) and total == pytest.approx(630 / 5.25)


def test_protocol_pivot_takes_the_later_file_and_marks_missing_cells(tmp_path):
    def cell(mode: str, ranks: int, ratio: float) -> dict:
        return {"mode": mode, "ranks": ranks, "straggler": 4.0, "ratio": ratio}

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"cells": [cell("ssgd", 2, 0.5), cell("ssgd", 8, 0.1), cell("pcasgd", 2, 0.9)]}))
    second.write_text(json.dumps({"cells": [cell("ssgd", 8, 0.98)]}))
    rows = protocol_pivot(protocol_cells([first, second])).splitlines()
    assert rows[0] == "| mode | 2 ranks, 4x | 8 ranks, 4x |"
    assert rows[2:] == ["| ssgd | 0.500 | 0.980 |", "| pcasgd | 0.900 | - |"]


def test_figures_draw_compare_grids_from_their_json(tmp_path):
    grid = tmp_path / "grid"
    grid.mkdir()
    cells = [
        {"variant": variant, "delay": "none", "seed": seed, "failed": False, "accuracy": 0.8 + seed / 100}
        for variant in ("ssgd", "dcasgd-a")
        for seed in (0, 1)
    ]
    (grid / "compare.json").write_text(json.dumps(cells))
    args = ["benchmarks/figures.py", "--claims", f"made up={grid}", "--out", str(tmp_path / "figures")]
    done = run_benchmark(*args, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "figures" / "seed_claims.png").stat().st_size > 10_000


def run_benchmark(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *argv], cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@needs_mpirun
@pytest.mark.timeout(600)
def test_protocol_benchmark_runs_and_asynchronous_beats_waiting_with_a_straggler(tmp_path, horovod):
    out = tmp_path / "protocol.json"
    flags = ["--ranks", "2", "--stragglers", "4", "--modes", "ssgd-horovod", "ssgd", "pcasgd", "ps-asgd"]
    done = run_benchmark("benchmarks/protocol.py", *flags, "--seconds", "2", "--step-ms", "50", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    cells = {cell["mode"]: cell for cell in json.loads(out.read_text())["cells"]}
    assert sorted(cells) == ["pcasgd", "ps-asgd", "ssgd", "ssgd-horovod"], done.stdout
    assert "| pcasgd | 2 | 4x |" in done.stdout
    # With rank 1 four times slower, ssgd cannot pass 2 / 0.2 s = 10 iterations/s; pcasgd's rank 0 runs on.
    assert cells["ssgd"]["ideal"] == pytest.approx(10.0) and cells["pcasgd"]["ideal"] == pytest.approx(25.0)
    assert cells["pcasgd"]["rate"] > cells["ssgd"]["rate"] and cells["pcasgd"]["rate"] > cells["ssgd-horovod"]["rate"]
    assert cells["pcasgd"]["exchange_seconds"] > 0


@needs_mpirun
@pytest.mark.timeout(900)
def test_real_compute_benchmark_runs_every_contender(tmp_path, horovod, fashion_mnist):
    out = tmp_path / "real.json"
    flags = ["--workloads", "lenet5-fashion-mnist", "--steps", "400", "--json", str(out)]
    done = run_benchmark("benchmarks/real_compute.py", *flags, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    measured = {(row["contender"], row["straggler"]) for row in rows}
    expected = {("single-1", 1.0), ("single-2", 1.0)}
    expected |= {(name, factor) for name in ("pcasgd", "horovod", "horovod-yield", "ddp") for factor in (1.0, 2.0)}
    assert measured == expected, done.stdout
    assert all(row["rate"] > 0 for row in rows)
    assert "Total img/sec on 2 CPU(s):" in done.stdout and "| pcasgd (asynchronous, MPI windows) | 2x |" in done.stdout


@needs_mpirun
@pytest.mark.timeout(600)
def test_time_to_accuracy_benchmark_tunes_each_method_and_reads_finished_runs_back(tmp_path, horovod):
    flags = ["--dataset", "digits", "--model", "mlp", "--methods", "pcasgd", "ssgd", "--stragglers", "2"]
    flags += ["--lrs", "0.01", "0.1", "--seeds", "0", "1", "--target", "0.6", "--agents", "2", "--epochs", "2"]
    flags += ["--eval-every", "4", "--out", str(tmp_path)]
    done = run_benchmark("benchmarks/time_to_accuracy.py", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    setting = json.loads((tmp_path / "time_to_accuracy.json").read_text())["settings"]["2"]
    for method in ("pcasgd", "ssgd"):
        row = setting[method]
        sweep = {float(lr): entry["time_to_target"] for lr, entry in row["sweep"].items()}
        assert sweep[row["lr"]] == min(sweep.values())  # the rate that reached the target soonest
        assert row["times"][0] == sweep[row["lr"]] and len(row["times"]) == 2
        assert (tmp_path / f"{method}-x2-lr{row['lr']:g}-seed1" / "summary.json").is_file()
    assert "| pcasgd |" in done.stdout and "/ ssgd" in done.stdout
    again = run_benchmark("benchmarks/time_to_accuracy.py", *flags, timeout=120)  # every run read back
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "time_to_accuracy.json").read_text())["settings"]["2"] == setting
    figure = ["benchmarks/figures.py", "--tta", str(tmp_path / "time_to_accuracy.json"), "--out", str(tmp_path)]
    assert run_benchmark(*figure, timeout=120).returncode == 0
    assert (tmp_path / "time_to_accuracy.png").stat().st_size > 10_000


@needs_mpirun
def test_synthetic_throughput_runs_the_ported_horovod_benchmark_under_pcasgd_and_horovod(tmp_path, horovod):
    out = tmp_path / "synthetic.json"
    flags = ["--batch-size", "2", "--warmup", "1", "--batches", "1", "--iters", "2", "--repeats", "1"]
    flags += ["--out", str(out)]
    done = run_benchmark("benchmarks/synthetic_throughput.py", *flags, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rates = json.loads(out.read_text())["img_per_second"]
    assert set(rates) == {"pcasgd", "ssgd", "horovod"} and all(r > 0 for runs in rates.values() for r in runs)
    assert "| horovod | " in done.stdout and "| 1.00 |" in done.stdout


@needs_mpirun
def test_the_synthetic_example_refuses_adasum_in_one_line():
    command = ["bash", "launch/mpirun.sh", "-n", "2", "examples/synthetic_benchmark.py", "--use-adasum", "--no-cuda"]
    done = subprocess.run(command, cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "op=Adasum: pcasgd has no Adasum reduction; use op=pcasgd.Average" in done.stderr, done.stderr[-2000:]


@needs_mpirun
def test_spawn_after_shrink_replaces_a_dead_rank_whose_newcomer_reads_and_is_read():
    """benchmarks/spawn_after_shrink.py, 3 tries on 3 ranks: each try is counted once, and the
    recipe (shrink, spawn, merge, a new window read across) holds at least once."""
    done = run_benchmark("benchmarks/spawn_after_shrink.py", "--tries", "3", "--timeout", "90", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert summary["held"] + summary["failed"] + summary["hung"] == 3 and summary["held"] >= 1, done.stdout
    assert summary["median_spawn_and_merge_s"] > 0
