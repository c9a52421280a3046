"""Checkpoints and --resume in the simulator: exact continuation, kills mid-run, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pcasgd import cli
from pcasgd.app import checkpoint as checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_weights(a, b) -> bool:
    first, second = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(
    "flags",
    [
        ["--mode", "pcasgd", "--delay", "fixed:2+straggler:1=2"],
        ["--mode", "pcasgd-pv", "--delay", "fixed:2", "--pv-warmup-epochs", "2", "--lam-adaptive"],
        ["--mode", "odsgd", "--odsgd-warmup", "5"],
        ["--mode", "dcasgd-a", "--delay", "fixed:3"],
        ["--mode", "sasgd", "--sasgd-n", "2", "--lr-schedule", "cosine"],
    ],
)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, flags):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli.main(["train", *flags, "--epochs", "5", "--out", str(whole)]) == 0
    assert cli.main(["train", *flags, "--epochs", "5", "--out", str(split), "--checkpoint-every", "2"]) == 0
    assert checkpoints.available_epochs(split, 0) == [2, 4]
    # Go back to epoch 2, as if the run had stopped during epoch 3 (then it has no summary either).
    (split / "checkpoints" / "rank-0" / "epoch-00004.pt").unlink()
    (split / "summary.json").unlink()
    assert cli.main(["train", *flags, "--epochs", "5", "--resume", str(split)]) == 0
    assert same_weights(whole, split)
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    whole_records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["test_accuracy"] for r in records] == [r["test_accuracy"] for r in whole_records]
    assert (split / "metrics.csv").read_text().count("\n") == 6  # header + 5 epochs


def test_killed_mid_run_then_resumed_matches_the_uninterrupted_run(tmp_path):
    flags = ["--mode", "pcasgd", "--delay", "fixed:2", "--epochs", "120"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main(["train", *flags, "--out", str(whole)]) == 0
    command = [sys.executable, "-m", "pcasgd.cli", "train", *flags, "--out", str(killed)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(epoch >= 10 for epoch in checkpoints.available_epochs(killed, 0)):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (killed / "summary.json").exists()
    assert cli.main(["train", *flags, "--resume", str(killed)]) == 0
    assert same_weights(whole, killed)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 121))


def test_a_checkpoint_from_another_configuration_is_refused_saying_what_differs(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    before = (run / "metrics.jsonl").read_text()
    assert cli.main(["train", "--epochs", "4", "--lr", "0.2", "--topology", "full", "--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert "comes from another configuration" in error
    assert "algorithm.lr: 0.1 in the checkpoint, 0.2 now" in error and "topology: 'ring' in the checkpoint" in error
    assert (run / "metrics.jsonl").read_text() == before and (run / "summary.json").exists()


def test_nothing_to_resume_and_unreadable_checkpoints_are_clear_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--checkpoint-every", "0", "--out", str(run)]) == 0
    assert cli.main(["train", "--epochs", "3", "--resume", str(run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "3", "--out", str(run), "--overwrite"]) == 0
    folder = run / "checkpoints" / "rank-0"
    (folder / ".epoch-00004.pt.tmp").write_bytes(b"half")  # a write cut short: ignored
    for epoch in (1, 2):  # the last epoch has no checkpoint: the run ended there
        (folder / f"epoch-0000{epoch}.pt").write_bytes(b"corrupt")
    assert cli.main(["train", "--epochs", "3", "--resume", str(run)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    torch.save({"format": checkpoints.FORMAT, "epoch": 2}, folder / "epoch-00002.pt")  # loads, but lacks fields
    assert cli.main(["train", "--epochs", "3", "--resume", str(run)]) == 2
    assert "lacks config, engine" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "3", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "names another" in capsys.readouterr().err


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    newest = run / "checkpoints" / "rank-0" / "epoch-00002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as a crash or a full disk leaves it
    (run / "summary.json").unlink()
    assert cli.main(["train", "--epochs", "4", "--resume", str(run)]) == 0
    assert "resuming rank 0 from epoch 1 instead" in capsys.readouterr().err
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_resume_refuses_fewer_epochs_than_the_checkpoint_has_trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert cli.main(["train", "--epochs", "1", "--resume", str(run)]) == 2
    assert "has trained 2 epochs; --epochs 1 goes no further" in capsys.readouterr().err
    for epochs in ("2", "3"):  # the checkpoint is at epoch 2, but the run finished 3
        assert cli.main(["train", "--epochs", epochs, "--resume", str(run)]) == 2
        assert "has finished its 3 epochs" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_resume_refuses_as_many_epochs_as_the_checkpoint_has_trained(tmp_path, capsys):
    """Issue 24 (15): an interrupted run resumed with --epochs equal to its checkpoint's epoch
    recorded that epoch twice; the old message itself suggested that value."""
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    (run / "summary.json").unlink()  # as if interrupted after the checkpoint of epoch 2
    assert cli.main(["train", "--epochs", "2", "--resume", str(run)]) == 2
    assert "--epochs 2 goes no further (resuming continues a run: pass --epochs 3 or more)" in capsys.readouterr().err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_new_run_refuses_a_directory_with_checkpoints_and_overwrite_clears_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    (run / "metrics.jsonl").unlink()
    (run / "summary.json").unlink()
    (run / "model.pt").unlink()
    (run / "metrics.csv").unlink()
    assert cli.main(["train", "--epochs", "2", "--out", str(run)]) == 2
    assert "checkpoints" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--overwrite", "--checkpoint-every", "0"]) == 0
    assert not (run / "checkpoints").exists()
