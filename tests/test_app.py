"""The training application: models, schedules, config files, metrics files, plots, comparisons."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from pcasgd import cli
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app.models import build_model
from pcasgd.errors import ConfigError


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_models_have_the_published_sizes_and_run_on_their_inputs():
    assert parameters(build_model("resnet20", (3, 32, 32), 10)) == 272_474  # projection shortcuts
    assert parameters(build_model("resnet20a", (3, 32, 32), 10)) == 269_722  # zero-padded identity shortcuts
    assert parameters(build_model("lenet5", (1, 28, 28), 10)) == 61_706
    for name, shape in (("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("torchvision:resnet18", (1, 28, 28))):
        assert build_model(name, shape, 10)(torch.zeros(2, *shape)).shape == (2, 10)


def test_bad_models_are_named():
    with pytest.raises(ConfigError, match="unknown model 'resnet21'"):
        build_model("resnet21", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="needs images"):
        build_model("lenet5", (64,), 10)


def test_learning_rate_schedules():
    step = AlgorithmConfig(lr=0.1, lr_schedule="step:2,4", lr_decay=0.5)
    assert [step.lr_at(e) for e in (0, 1.99, 2, 4.5)] == [0.1, 0.1, 0.05, 0.025]
    cosine = AlgorithmConfig(lr=0.1, lr_schedule="cosine:10")
    assert cosine.lr_at(0) == 0.1 and math.isclose(cosine.lr_at(5), 0.05) and cosine.lr_at(12) == 0.0
    warm = AlgorithmConfig(lr=0.1, lr_warmup_epochs=2)
    assert math.isclose(warm.lr_at(0), 0.01) and math.isclose(warm.lr_at(1), 0.055) and warm.lr_at(2) == 0.1
    for spec in ("step", "cosine:x", "linear", "step:-1"):
        with pytest.raises(ConfigError, match="unknown lr schedule"):
            AlgorithmConfig(lr_schedule=spec)


def test_default_momentum_is_zero_where_updates_are_asynchronous_at_a_server():
    defaults = {
        ("ssgd", 1): 0.9,
        ("pcasgd", 1): 0.9,
        ("sasgd", 1): 0.9,  # hardsync: ssgd
        ("sasgd", 4): 0.0,
        ("ps-asgd", 1): 0.0,
        ("dcasgd-a", 1): 0.0,
    }
    for (mode, n), momentum in defaults.items():
        assert AlgorithmConfig(mode=mode, sasgd_n=n).effective_momentum == momentum, mode
    assert AlgorithmConfig(mode="sasgd", sasgd_n=4, momentum=0.5).effective_momentum == 0.5


def test_a_schedule_changes_the_run_and_weight_decay_shrinks_the_weights(tmp_path):
    finals = {}
    for name, extra in (("plain", []), ("step", ["--lr-schedule", "step:1"]), ("wd", ["--weight-decay", "0.05"])):
        assert cli.main(["train", "--epochs", "2", "--out", str(tmp_path / name), *extra]) == 0
        finals[name] = torch.load(tmp_path / name / "model.pt")
    records = [json.loads(line) for line in (tmp_path / "step" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [0.1 * 0.1, 0.1 * 0.1]  # the lr in force at the end of each epoch
    norm = {name: sum(float(t.norm() ** 2) for t in state.values()) for name, state in finals.items()}
    assert norm["wd"] < norm["plain"] and not torch.equal(finals["step"]["1.weight"], finals["plain"]["1.weight"])


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nbatch_size: 16\nmode: asgd\ntensorboard: true\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--epochs", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    effective = summary["config"]
    assert effective["epochs"] == 2 and effective["batch_size"] == 16 and effective["algorithm"]["mode"] == "asgd"
    assert any((out / "tensorboard").iterdir())
    assert '"batch_size": 16' in capsys.readouterr().err  # the effective config is printed at start


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("tensorboard: 3\n", "is a switch"),
        ("- a list\n", "must hold a mapping"),
        ("epochs: [\n", "not valid YAML"),
        ("epochs: many\n", "expected an integer"),
    ],
)
def test_bad_config_files_are_refused_before_anything_is_written(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "run"
    assert exit_code(["train", "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def exit_code(argv: list[str]) -> int:
    """``cli.main``'s status, also when argparse itself rejects a value (it exits with 2)."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--mode", "fastest"], "invalid choice: 'fastest'"),
        (["--dataset", "fashion-mnist", "--data-dir", "EMPTY"], "fashion-mnist not found"),
        (["--dataset", "cifar10", "--data-dir", "CORRUPT"], "not a readable .tar.gz"),
        (["--partition", "dirichlet:0"], "unknown partition"),
        (["--lr-schedule", "linear"], "unknown lr schedule"),
    ],
)
def test_bad_training_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("PCASGD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "CORRUPT.tar.gz").write_bytes(b"\x1f\x8b broken")
    flags = [
        f.replace("EMPTY", str(tmp_path / "EMPTY")).replace("CORRUPT", str(tmp_path / "CORRUPT.tar.gz")) for f in flags
    ]
    previous = tmp_path / "run"
    previous.mkdir()
    (previous / "metrics.jsonl").write_text("keep\n")
    assert exit_code(["train", "--epochs", "1", "--out", str(previous), "--overwrite", *flags]) == 2
    assert message in capsys.readouterr().err
    assert (previous / "metrics.jsonl").read_text() == "keep\n"


def test_metrics_files_plots_and_compare_from_real_runs(tmp_path, capsys):
    runs = []
    for mode in ("pcasgd", "asgd"):
        out = tmp_path / mode
        assert cli.main(["train", "--mode", mode, "--delay", "fixed:3", "--epochs", "3", "--out", str(out)]) == 0
        runs.append(out)
    rows = list(csv.DictReader((runs[0] / "metrics.csv").open()))
    jsonl = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and float(rows[-1]["test_accuracy"]) == jsonl[-1][
        "test_accuracy"
    ]
    assert jsonl[-1]["staleness_histogram"] == {"3": sum(jsonl[-1]["staleness_histogram"].values())}
    assert jsonl[0]["eta_seconds"] > 0 and jsonl[-1]["eta_seconds"] == 0
    figures = tmp_path / "figures"
    assert cli.main(["plot", *map(str, runs), "--out", str(figures)]) == 0
    for name in ("accuracy_epoch.png", "accuracy_time.png", "consensus.png", "staleness.png"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = tmp_path / "grid"
    argv = ["compare", "--modes", "pcasgd", "asgd", "--delays", "none", "fixed:3", "--seeds", "0", "1"]
    assert cli.main([*argv, "--epochs", "2", "--out", str(grid)]) == 0
    table = (grid / "compare.md").read_text().splitlines()
    assert table[0].startswith("| variant | delay | test accuracy")
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in table[2:]]
    assert rows == [["pcasgd", "none"], ["pcasgd", "fixed:3"], ["asgd", "none"], ["asgd", "fixed:3"]]
    assert " ± " in table[2] and (grid / "compare.png").is_file()
    assert len(json.loads((grid / "compare.json").read_text())) == 8
    assert json.loads((grid / "asgd__fixed_3__seed1" / "summary.json").read_text())["config"]["epochs"] == 2


def test_compare_variants_count_failed_cells_and_reuse_finished_ones(tmp_path, capsys):
    grid = tmp_path / "grid"
    argv = ["compare", "--variant", "theta 0.25=--mode pcasgd --theta 0.25", "--variant", "blows up=--lr 1e12"]
    argv += ["--delays", "fixed:2", "--epochs", "2", "--out", str(grid)]
    assert cli.main(argv) == 0
    assert "cell blows_up__fixed_2__seed0 failed while training" in capsys.readouterr().err
    cells = {cell["variant"]: cell for cell in json.loads((grid / "compare.json").read_text())}
    assert cells["blows up"]["failed"] and not cells["theta 0.25"]["failed"]
    config = json.loads((grid / "theta_0.25__fixed_2__seed0" / "summary.json").read_text())["config"]
    assert config["algorithm"]["theta"] == 0.25 and config["delay"] == "fixed:2"
    assert (grid / "compare.md").read_text().splitlines()[3].endswith("| 1/1 |")
    summary = grid / "theta_0.25__fixed_2__seed0" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert cli.main(argv) == 0  # the finished cell is read back, not run again
    assert summary.stat().st_mtime_ns == before
    assert json.loads((grid / "compare.json").read_text())[0]["accuracy"] == cells["theta 0.25"]["accuracy"]
    ran_with_other_defaults = json.loads(summary.read_text())
    ran_with_other_defaults["config"]["algorithm"]["age_fresh"] += 1
    summary.write_text(json.dumps(ran_with_other_defaults))
    assert cli.main(argv) == 0  # a cell whose configuration differs from what its flags give now runs again
    assert json.loads(summary.read_text())["config"]["algorithm"]["age_fresh"] == AlgorithmConfig().age_fresh


def test_plot_and_compare_refuse_bad_input(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert cli.main(["compare", "--modes", "pcasgd", "--delays", "fixed:x", "--out", str(tmp_path / "g")]) == 2
    assert not (tmp_path / "g").exists()
    for variant, message in [
        ("no equals sign", "expected NAME=FLAGS"),
        ("x=--seed 3", "compare sets those per cell"),
        ("x=--theta 7", "7 is outside [0.0, 1.0]"),
    ]:
        assert cli.main(["compare", "--variant", variant, "--out", str(tmp_path / "g")]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["compare", "--out", str(tmp_path / "g")]) == 2
    assert "at least one mode or variant" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_every_flag_is_documented_in_docs_cli_md():
    text = (cli.Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    _, commands = cli.command_parsers()
    flags = {
        option
        for parser in commands.values()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    missing = sorted(flag for flag in flags if f"`{flag}" not in text)
    assert not missing, missing


def test_trains_and_evaluates_on_fixed_subsets_when_asked(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--train-samples", "200", "--test-samples", "50", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partition"]["samples_per_agent"] == [50, 50, 50, 50]
    assert summary["iterations_per_epoch"] == 2  # batches of 32
    for accuracy in (summary["final"]["test_accuracy"], summary["final"]["agent_accuracy_max"]):
        assert accuracy * 50 == pytest.approx(round(accuracy * 50))  # a fraction of 50 test samples
    assert cli.main([*argv[:-2], "--test-samples", "361", "--out", str(tmp_path / "too-many")]) == 2


def test_records_every_k_iterations_between_the_epochs(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--eval-every", "5", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = json.loads((out / "summary.json").read_text())["iterations_per_epoch"]  # 12 on digits
    expected = sorted({*(k / per_epoch for k in range(5, 2 * per_epoch, 5)), 1, 2})
    assert [r["epoch"] for r in records] == pytest.approx(expected)
    assert [r["sim_time"] for r in records if r["epoch"] not in (1, 2)] == [5, 10, 15, 20]
    assert records[-1]["epoch"] == 2 and isinstance(records[2]["epoch"], int)  # epoch boundaries stay integers


def test_shards_smaller_than_a_batch_are_named_in_a_warning(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--batch-size", "400", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "pcasgd: warning: 4 shard(s) hold fewer samples than a batch of 400 (agent 0: 360" in err
