"""Issue 24's reproductions: what a Horovod user types, and what an adversarial run found, each
answered as the docs promise (the program runs, or one line says why not)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pcasgd import cli, topology
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app.files import write_atomically
from pcasgd.app.sources import cache_root
from pcasgd.errors import ConfigError, RunFilesError, TopologyError
from tests.mpi_support import HOSTS, ROOT, mpi_env, needs_mpirun


def _launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = ["bash", "launch/mpirun.sh", *args]
    return subprocess.run(command, cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=timeout)


@needs_mpirun
def test_mpirun_sh_runs_python_script_py_as_every_mpi_user_types_it(tmp_path):
    """It fell through to `pcasgd train`, which took the script's flags as its own."""
    script = tmp_path / "my_script.py"
    script.write_text("import os, sys\nprint('rank', os.environ['OMPI_COMM_WORLD_RANK'], sys.argv[1:])\n")
    result = _launch("-n", "2", "python", str(script), "--model", "resnet18", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank"))
    assert lines == [f"rank {r} ['--model', 'resnet18', '--batch-size', '2']" for r in (0, 1)]


def test_mpirun_sh_refuses_what_it_cannot_run_before_anything_starts():
    for args, said in (
        (["-n", "2", "resnet18", "--epochs", "1"], "does not know how to run 'resnet18'"),
        (["-n", "two", "x.py"], "-n two: expected a number of ranks"),
    ):
        result = _launch(*args, timeout=30)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""


SHAPES_DIFFER = """
import torch
import pcasgd
from pcasgd.errors import ConfigError

pcasgd.init()
model = torch.nn.Linear(2, 2 + pcasgd.rank())  # rank 1's has another shape
before = [p.clone() for p in model.parameters()]
try:
    pcasgd.broadcast_parameters(model)
except ConfigError as error:
    kept = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    print(f"rank {pcasgd.rank()} refused, weights kept: {kept}: {error}", flush=True)
"""


@needs_mpirun
def test_broadcast_parameters_refuses_tensors_that_differ_between_ranks(tmp_path):
    """Issue 24 (16): it returned without error after overwriting the weights in part."""
    script = tmp_path / "shapes.py"
    script.write_text(SHAPES_DIFFER)
    result = _launch("-n", "2", str(script))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank"))
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert "refused, weights kept: True: broadcast_parameters: tensor 0 is (3, 2) float32 on rank 1" in line


@pytest.mark.parametrize("spec", ["ring:3", "star:2", "full:x", "exp:2", "exponential:", "one-peer-exp:4"])
def test_a_topology_argument_that_would_be_ignored_is_refused(spec):
    with pytest.raises(TopologyError, match="takes no ':' argument"):
        topology.build(spec, 4)


def test_an_infinite_schedule_point_is_refused():
    with pytest.raises(ConfigError, match="unknown lr schedule 'step:1e400'"):
        AlgorithmConfig(mode="pcasgd", lr_schedule="step:1e400")


def test_an_empty_cache_variable_is_refused_instead_of_caching_into_the_working_directory(monkeypatch):
    monkeypatch.setenv("PCASGD_CACHE", "")
    with pytest.raises(ConfigError, match="PCASGD_CACHE is set but empty"):
        cache_root()


def test_a_refused_run_says_one_line_and_no_configuration(tmp_path, capsys):
    """The configuration line came before every refusal made after parsing."""
    assert cli.main(["train", "--topology", "ring:3", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pcasgd: error") and err.count("\n") == 1, err
    flags = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "s")]
    assert cli.main(["train", *flags]) == 0
    assert " -> " in capsys.readouterr().err  # a run that starts still names its directory and settings


def _alias_bomb(levels: int) -> str:
    """One key whose value nests ``levels`` lists of nine references to the previous one."""
    lists = ['&l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lists += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"lr: [{', '.join(lists)}]\n"


def test_a_yaml_alias_bomb_is_one_short_error_line(tmp_path, capsys):
    """A 347-byte file made a 351 MB error line: a list's str() became a flag value."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(9))  # 9**9 strings once expanded
    assert cli.main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == f"pcasgd: error: config file {config}: lr takes one value, got a list\n"


def test_a_config_that_is_not_a_settings_file_is_not_read_whole(capsys):
    assert cli.main(["train", "--config", "/dev/zero"]) == 2
    assert "larger than 64 KiB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--mode", "clip", "--lam", "5", "--predictor", "draft"], "--lam does nothing with --mode clip"),
        (["--mode", "predict", "--theta", "0.3"], "--theta does nothing with --mode predict"),
        (["--mode", "clip", "--theta", "0.5"], "--theta does nothing with --mode clip"),
        (["--mode", "asgd", "--predictor", "momentum"], "--predictor does nothing with --mode asgd"),
        (["--mode", "pcasgd", "--predictor", "trajectory", "--lam", "2"], "--lam does nothing"),
        (["--mode", "ssgd", "--lam", "1"], "--lam does nothing with --mode ssgd"),
    ],
)
def test_an_option_the_mode_never_reads_is_refused(tmp_path, capsys, flags, said):
    """`--mode clip --lam 5 --predictor draft` ran, and its summary reported lambda 5."""
    assert cli.main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_options_the_mode_reads_are_taken_from_a_config_file_too(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("mode: dsgd\ntheta: 0.25\n")
    assert cli.main(["train", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    assert "--theta does nothing with --mode dsgd" in capsys.readouterr().err


@pytest.mark.usefixtures("hosts")
def test_a_test_bed_that_fails_to_come_up_is_removed_and_leaves_other_beds_alone():
    """`up 2 --rate bogus` failed in tc but left namespaces and /etc/hosts lines that `status`
    reported as up; `down` removed every bed's /etc/hosts lines, not only its own."""
    env = {**os.environ, "PCASGD_HOSTS_PREFIX": "pcasgd-adv"}
    hosts_before = Path("/etc/hosts").read_text()

    def bed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(HOSTS), *args], env=env, capture_output=True, text=True, timeout=120)

    failed = bed("up", "2", "--rate", "bogus")
    assert failed.returncode != 0 and "up failed; what it had built is removed" in failed.stderr, failed.stderr
    assert bed("status").returncode != 0
    assert "pcasgd-adv" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert Path("/etc/hosts").read_text() == hosts_before  # the main bed's lines are still there
    up = bed("up", "2")
    assert up.returncode == 0, up.stderr
    assert bed("down").returncode == 0
    assert Path("/etc/hosts").read_text() == hosts_before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--variant", "a b=--mode asgd", "--variant", "a_b=--mode dsgd"], "and 'a b' both name the run folders"),
        (["--modes", "asgd", "--seeds", "0", "0", "0"], "seed 0 is repeated"),
        (["--modes", "asgd", "--delays", "fixed:2", "fixed:2"], "delay 'fixed:2' is repeated"),
        (["--variant", "x=--resum somewhere"], "sets --resume: compare sets those per cell"),
        (["--variant", "x=--config other.yaml"], "sets --config"),
        (["--variant", 'x=--theta "0.3'], "No closing quotation"),
    ],
)
def test_compare_refuses_cells_that_would_share_a_folder_and_unchecked_variants(tmp_path, capsys, args, said):
    """`a b` and `a_b` shared run folders; --seeds 0 0 0 counted as three seeds; a variant's
    --config or an abbreviated --resum escaped the up-front check; a stray quote was a traceback."""
    assert cli.main(["compare", *args, "--epochs", "1", "--out", str(tmp_path / "grid")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert not (tmp_path / "grid").exists()


def test_overwrite_never_replaces_files_pcasgd_did_not_write(tmp_path, capsys):
    """Any checkpoints/, tensorboard/ or model.pt in --out counted as a run, and --overwrite
    moved them away (then deleted them at the first record)."""
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"my own model")
    flags = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--overwrite", "--out"]
    assert cli.main([*flags, str(out)]) == 2
    assert "no pcasgd run wrote them" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == b"my own model" and (out / "checkpoints").is_dir()
    run = tmp_path / "run"
    assert cli.main([*flags, str(run)]) == 0
    assert cli.main([*flags, str(run)]) == 0  # pcasgd's own run is replaced


def test_a_bad_cache_in_the_simulator_is_one_error_line(tmp_path, capsys, monkeypatch, fashion_mnist):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("PCASGD_CACHE", str(tmp_path / "file"))
    flags = ["train", "--dataset", "fashion-mnist", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert cli.main(flags) == 2
    err = capsys.readouterr().err
    assert "the dataset cache" in err and "cannot be used" in err and err.count("\n") == 1, err


@needs_mpirun
def test_a_failure_on_rank_0_while_preparing_the_data_ends_every_rank_at_once(tmp_path, fashion_mnist):
    """It held the job for the whole --startup-deadline (600 s): only a ConfigError was passed on."""
    (tmp_path / "file").write_text("x")
    env = {**mpi_env(), "PCASGD_CACHE": str(tmp_path / "file")}
    command = ["bash", "launch/mpirun.sh", "-n", "2", "--dataset", "fashion-mnist", "--model", "mlp", "--epochs", "1"]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "r")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and time.monotonic() - started < 60
    errors = [line for line in result.stderr.splitlines() if line.startswith("pcasgd: error")]
    assert len(errors) == 2 and all("the dataset cache" in line for line in errors), result.stderr[-2000:]


@needs_mpirun
def test_bfloat16_travels_every_mpi_path_of_the_api():
    """ssgd averaged [1, .01, 100, -2]-scaled bf16 gradients into [nan, 0.000294, -0, -0]; the
    other paths raised `Got unsupported ScalarType BFloat16`."""
    result = _launch("-n", "2", "tests/mpi_programs/bf16.py")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(ranks) == 2
    for case in ranks:
        assert case["broadcast"] == [1.0] * 6
        assert case["allreduce"] == [1.5, 4.5]
        assert case["averaged"] == [2.0] * 6
        assert case["ssgd"] == pytest.approx([2.0, 0.02, 200.0, -4.0], rel=1e-2)
        assert case["decentralized_finite"]
        assert case["ssgd_fp16_sum"] == pytest.approx([4.0, 0.04, 400.0, -8.0], rel=1e-3)
        assert case["window_itemsize"] == 2 and case["fp16_snapshots_finite"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"mode": "ssgd", "op": "adasum"}, "op=Adasum: pcasgd has no Adasum reduction"),
        ({"mode": "pcasgd", "op": "sum"}, "only op=pcasgd.Average, and op=pcasgd.Sum with ssgd"),
        ({"mode": "ssgd", "compression": "zip"}, "compression='zip': use pcasgd.Compression.none"),
        ({"mode": "ssgd", "compression": "bf16"}, "MPI sums no bfloat16"),
        ({"mode": "ssgd", "backward_passes_per_step": 2}, "unknown option backward_passes_per_step"),
    ],
)
def test_horovods_keywords_without_a_meaning_here_are_refused_in_one_line(options, said):
    """compression= and op= raised `TypeError: AlgorithmConfig.__init__() got an unexpected keyword`."""
    import pcasgd

    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=re.escape(said)):
        pcasgd.DistributedOptimizer(sgd, **options)


def test_horovods_names_exist_and_say_what_they_are():
    import pcasgd

    assert pcasgd.Compression.fp16.name == "fp16" and pcasgd.Compression.none.name == "none"
    assert (pcasgd.Average, pcasgd.Sum) == ("average", "sum")
    assert pcasgd.nccl_built() is False and pcasgd.mpi_built() is True


@needs_mpirun
@pytest.mark.parametrize("mode", ["pcasgd", "ssgd"])
def test_a_run_with_half_precision_exchange_learns(tmp_path, mode):
    out = tmp_path / mode
    flags = ["--mode", mode, "--compression", "fp16", "--dataset", "digits", "--model", "mlp", "--epochs", "10"]
    result = _launch("-n", "2", *flags, "--out", str(out), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["algorithm"]["compression"] == "fp16"
    assert summary["final"]["test_accuracy"] > 0.85  # digits: chance is 0.10


@needs_mpirun
def test_sync_batchnorm_on_two_half_batches_equals_batchnorm_on_the_whole_batch():
    """Horovod's benchmark passes norm_layer=hvd.SyncBatchNorm: it was an AttributeError."""
    result = _launch("-n", "2", "tests/mpi_programs/sync_batchnorm.py")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(ranks) == 2
    for case in ranks:
        for name in ("output", "running_mean", "running_var", "input_grad"):
            assert case[name] < 1e-5, case
        assert case["weight_grad"] < 1e-3 and case["bias_grad"] < 1e-3, case  # sums of 256 terms near 100
        assert "use nn.BatchNorm with mix_buffers=True" in case["decentralized"], case
        assert "use nn.BatchNorm with mix_buffers=True" in case["decentralized_named"], case


@needs_mpirun
@pytest.mark.parametrize("fault_tolerant", [False, True], ids=["plain", "fault-tolerant"])
def test_an_unforeseen_exception_ends_the_job_at_once(tmp_path, fault_tolerant):
    """Under --fault-tolerant such a rank ended through MPI_Finalize, which hangs in ULFM's failure
    detector: the job never ended. Without it the others waited for their deadlines."""
    flags = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "r")]
    flags += ["--fault-tolerant"] if fault_tolerant else []
    # a hang shows as the timeout (the deadlines it waited for are 60 s and 600 s)
    result = _launch("-n", "2", "tests/mpi_programs/unforeseen_error.py", *flags, timeout=150)
    assert result.returncode != 0
    said = "this rank ends" if fault_tolerant else "ending the job"
    assert f"ZeroDivisionError: an unforeseen failure (above: where); {said}" in result.stderr, result.stderr[-2000:]


@needs_mpirun
def test_a_rank_killed_during_fault_tolerant_start_up_ends_the_survivors_with_one_line(tmp_path):
    """The survivors' first collective raised MPI_ERR_PROC_FAILED, printed as a traceback."""
    flags = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--fault-tolerant", "--out", str(tmp_path / "r")]
    result = _launch("-n", "3", "tests/mpi_programs/dies_at_startup.py", *flags, timeout=150)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "a rank died during start-up" in line]
    said = sorted(line.split(":")[1] for line in lines)
    assert said == [" run failed (rank 0)", " run failed (rank 1)"], result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_random_graph_of_one_edge_is_drawn():
    """`--agents 2 --topology random:1`, a valid 1-regular graph, was a traceback from NumPy."""
    graph = topology.build("random:1", 2)
    assert graph.in_neighbours(0) == [1] and graph.in_neighbours(1) == [0]


def test_a_file_name_too_long_to_write_is_one_run_files_error(tmp_path):
    """write_atomically's cleanup raised its own OSError (the temporary's name was too long too)."""
    with pytest.raises(RunFilesError, match="cannot write"):
        write_atomically(tmp_path / ("n" * 260), lambda path: path.write_text("x"))
