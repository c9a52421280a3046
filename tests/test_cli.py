"""The ``pcasgd train`` command end to end on the bundled digits data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcasgd.algorithms import MODES
from pcasgd.app.data import load
from pcasgd.app.models import build_model
from pcasgd.cli import main

CONSOLE_SCRIPT = Path(sys.executable).with_name("pcasgd")
RECORD_KEYS = {
    "epoch",
    "test_accuracy",
    "test_loss",
    "agent_accuracy_min",
    "agent_accuracy_max",
    "agent_accuracy_std",
    "train_loss",
    "wall_seconds",
    "samples",
    "samples_per_second",
    "consensus_distance_mean",
    "consensus_distance_max",
    "staleness_mean",
    "staleness_max",
    "predict_fraction",
}


def train(tmp_path: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "run"
    return main(["train", "--out", str(out), *flags]), out


@pytest.mark.parametrize(
    "flags",
    [
        ("--mode", "pcasgd-pv", "--delay", "fixed:2", "--pv-warmup-epochs", "1"),
        ("--mode", "sasgd", "--sasgd-n", "2"),
        ("--mode", "odsgd", "--odsgd-warmup", "5"),
        ("--mode", "asgd", "--topology", "one-peer-exp", "--delay", "uniform:0..3"),
    ],
)
def test_train_writes_metrics_summary_and_the_evaluated_model(tmp_path, flags):
    code, out = train(tmp_path, "--epochs", "3", "--agents", "4", *flags)
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) >= RECORD_KEYS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["algorithm"]["mode"] == flags[1]
    assert {"pcasgd", "torch", "numpy", "python"} <= set(summary["versions"])
    assert summary["final"] == records[-1]

    data = load("digits")
    model = build_model("mlp", data.input_shape, data.classes)
    model.load_state_dict(torch.load(out / "model.pt"))
    accuracy = int((model(data.test_x).argmax(dim=1) == data.test_y).sum()) / len(data.test_y)
    assert accuracy == pytest.approx(summary["final"]["test_accuracy"], abs=1e-9)


def test_pv_logs_its_decisions(tmp_path):
    code, out = train(tmp_path, "--mode", "pcasgd-pv", "--delay", "fixed:2", "--pv-warmup-epochs", "1", "--epochs", "2")
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["predict_fraction"] is None  # warm-up epoch: plain asgd
    assert 0.0 <= records[1]["predict_fraction"] <= 1.0
    decisions = json.loads((out / "summary.json").read_text())["decisions"]
    warm_up_steps = sum(records[0]["iterations"])
    assert decisions["mix"] == warm_up_steps
    assert decisions["predict"] + decisions["clip"] == sum(records[-1]["iterations"]) - warm_up_steps


def test_refuses_to_overwrite_an_earlier_run(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    code, out = train(tmp_path, "--epochs", "2")
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert train(tmp_path, "--epochs", "2", "--overwrite")[0] == 0


def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "3")[0] == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "final test accuracy" in captured.out


def test_a_record_without_training_since_the_last_one_has_no_loss_not_nan(tmp_path):
    """Asynchronous runs can pass two record marks at once (a neighbour reports the run's
    progress); the second record has no training loss: null in JSON, "-" in the progress line."""
    import io

    from pcasgd.app.progress import EpochProgress
    from pcasgd.engine import EpochStats

    assert EpochStats().mean_loss is None
    record = {"epoch": 2, "test_accuracy": 0.5, "train_loss": None, "consensus_distance_mean": 0.1}
    record |= {"staleness_mean": 0.0, "samples_per_second": 0.0, "wall_seconds": 1.0}
    assert "loss -  consensus" in EpochProgress(3, io.StringIO()).line(record)
    assert json.loads(json.dumps(record))["train_loss"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "nope"], "invalid choice: 'nope'"),
        (["--agents", "0"], "0 is outside"),
        (["--lr", "fast"], "expected a number"),
        (["--topology", "hypercube"], "pcasgd: error: unknown topology 'hypercube'"),
        (["--delay", "fixed:x"], "pcasgd: error: bad delay spec 'fixed:x'"),
        (["--delay", "straggler:9=2"], "pcasgd: error: delay spec 'straggler:9=2' names rank(s) [9]"),
        (["--mode", "sasgd", "--sasgd-n", "8"], "pcasgd: error: sasgd n-softsync needs n <= workers (4)"),
        (["--topology", "star", "--weights", "uniform"], "pcasgd: error: mixing matrix column 0"),
        (["--topology", "torus:3x3"], "pcasgd: error: torus 3x3 has 9 agents"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_2(tmp_path, flags, message):
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "train", "--epochs", "1", "--out", str(tmp_path / "run"), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("delay", ["none", "fixed:4"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_learns_digits_with_and_without_delay(tmp_path, mode, delay):
    """The acceptance run of issue 2 (4 agents, ring, 10 epochs, seed 0) as a regression test."""
    code, out = train(tmp_path, "--mode", mode, "--delay", delay, "--epochs", "10")
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["final"]["test_accuracy"] >= 0.90
