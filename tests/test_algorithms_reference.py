"""Every mode, run by the simulator, against the hand-written NumPy references in reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.sim import simulate
from tests.reference import Quadratic, consensus, odsgd, server, ssgd

ITERATIONS = 30
LR, MU = 0.05, 0.9


def run_sim(config: AlgorithmConfig, agents: int, delay: str, topo=None, iterations=ITERATIONS, seed=0):
    problem = Quadratic(agents, seed=seed)
    result = simulate(
        config,
        agents,
        delays.parse(delay, seed=seed),
        problem,
        problem.initial(),
        iterations_per_epoch=iterations,
        epochs=1,
        topology=topo,
    )
    return problem, result


CONSENSUS_CASES = [
    ("dsgd", {}, "fixed:3"),
    ("asgd", {}, "fixed:3"),
    ("asgd", {}, "edge:0-1=4,2-3=1"),
    ("pcasgd", {"theta": 0.3}, "fixed:3"),
    ("pcasgd", {"theta": 0.7, "predictor": "taylor"}, "uniform:0..4"),
    ("pcasgd", {"theta": 0.5, "clip_weights": "uniform"}, "edge:0-1=2"),
    ("pcasgd", {"theta": 0.5, "lam_adaptive": True, "lam": 2.0}, "uniform:0..3"),
    ("pcasgd", {"theta": 0.5, "age_fresh": 0.0}, "uniform:0..3"),
    ("pcasgd", {"theta": 0.5, "age_fresh": 2.0}, "uniform:0..4"),
    ("pcasgd", {"theta": 0.6, "predictor": "extrapolate"}, "uniform:0..4"),
    ("pcasgd", {"theta": 0.6, "predictor": "extrapolate", "lam": 0.0, "age_max": 1.5}, "fixed:3"),
    ("pcasgd", {"theta": 0.6, "predictor": "taylor", "age_max": 2.0, "age_fresh": 0.5}, "fixed:3"),
    ("pcasgd", {"theta": 0.5, "predictor": "extrapolate", "lam_adaptive": True, "lam": 2.0}, "uniform:0..3"),
    ("predict", {}, "fixed:2"),
    ("clip", {}, "fixed:2"),
    ("pcasgd-pv", {"pv_warmup_epochs": 0.3}, "fixed:2"),
    ("pcasgd-pv", {"pv_warmup_epochs": 0.0, "predictor": "taylor"}, "uniform:1..3"),
    ("pcasgd", {"theta": 0.6, "predictor": "momentum", "age_fresh": 0.5}, "fixed:3"),
    ("pcasgd", {"theta": 0.4, "predictor": "momentum", "lam": 0.0, "age_max": 3.0}, "uniform:0..4"),
    ("pcasgd", {"theta": 0.5, "predictor": "momentum", "lam_adaptive": True, "lam": 2.0}, "uniform:0..3"),
    ("pcasgd", {"theta": 0.5, "predictor": "trajectory", "age_fresh": 0.5}, "uniform:0..3"),
    ("predict", {"predictor": "trajectory", "age_max": 1.0}, "fixed:2"),
    # --overlap: every read one step older, snapshots with the gradient of the step before
    ("dsgd", {"overlap": True}, "none"),
    ("asgd", {"overlap": True}, "fixed:2"),
    ("pcasgd", {"overlap": True, "predictor": "momentum", "age_fresh": 0.5}, "uniform:0..3"),
    ("pcasgd", {"overlap": True, "predictor": "taylor", "lam_adaptive": True, "lam": 2.0}, "fixed:1"),
    ("pcasgd", {"overlap": True, "predictor": "draft", "age_fresh": 0.5}, "fixed:2"),
    ("pcasgd", {"overlap": True, "predictor": "extrapolate", "age_fresh": 0.5}, "edge:0-1=2"),
    ("pcasgd-pv", {"overlap": True, "pv_warmup_epochs": 0.0, "age_fresh": 0.5}, "fixed:1"),
    ("pcasgd", {"overlap": True, "predictor": "trajectory", "age_fresh": 0.5}, "fixed:1"),
]


@pytest.mark.parametrize(("mode", "options", "delay"), CONSENSUS_CASES)
@pytest.mark.parametrize("graph", ["ring", "full", "star"])
def test_decentralized_modes_match_numpy_reference(mode, options, delay, graph):
    topo = topology.build(graph, 4)
    config = AlgorithmConfig(mode=mode, lr=LR, momentum=MU, **options)
    problem, result = run_sim(config, 4, delay, topo)
    model = delays.parse(delay, seed=0)
    expected = consensus(
        problem,
        topo.weights,
        model.lag,
        ITERATIONS,
        {
            "mode": mode,
            "lr": LR,
            "mu": MU,
            "theta": options.get("theta", 0.5),
            "predictor": config.predictor,
            "clip_weights": options.get("clip_weights", "rescale"),
            "lam": config.effective_lambda,
            "adaptive": options.get("lam_adaptive", False),
            "age_fresh": config.age_fresh,
            "age_max": config.age_max,
            "overlap": config.overlap,
            "warmup": options.get("pv_warmup_epochs", 0.0),
            "ipe": ITERATIONS,
        },
    )
    for got, want in zip(result.agent_params, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    assert result.iterations == [ITERATIONS] * 4


@pytest.mark.parametrize(
    ("mode", "options", "delay"),
    [
        ("ps-asgd", {}, "none"),
        ("ps-asgd", {"momentum": 0.5}, "fixed:2"),
        ("dcasgd-c", {"lam": 0.5}, "fixed:1"),
        ("dcasgd-a", {}, "uniform:0..2"),
        ("sasgd", {"sasgd_n": 2}, "none"),
        ("sasgd", {"sasgd_n": 4}, "edge:0-2=3"),
    ],
)
def test_server_modes_match_numpy_reference(mode, options, delay):
    config = AlgorithmConfig(mode=mode, lr=LR, **options)
    problem, result = run_sim(config, 4, delay)
    model = delays.parse(delay, seed=0)
    expected = server(
        problem,
        4,
        ITERATIONS,
        model.lag,
        {
            "mode": mode,
            "lr": LR,
            "mu": config.effective_momentum,
            "lam": config.effective_lambda,
            "n": options.get("sasgd_n", 1),
        },
    )
    np.testing.assert_allclose(result.reference_params.numpy(), expected, rtol=0, atol=1e-10)


def test_ssgd_matches_numpy_reference():
    problem, result = run_sim(AlgorithmConfig(mode="ssgd", lr=LR, momentum=MU), 4, "none")
    np.testing.assert_allclose(
        result.reference_params.numpy(), ssgd(problem, 4, ITERATIONS, LR, MU), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize(
    ("options", "delay", "latency"),
    [
        ({"odsgd_warmup": 5}, "none", 1),
        ({"odsgd_warmup": 0, "odsgd_local_lr": 0.2}, "fixed:2", 1),
        ({"odsgd_warmup": 3, "odsgd_overlap": False}, "none", 0),
        ({"odsgd_warmup": 4, "odsgd_local_opt": "dc"}, "fixed:1", 1),
    ],
)
def test_odsgd_matches_numpy_reference(options, delay, latency):
    config = AlgorithmConfig(mode="odsgd", lr=LR, momentum=MU, **options)
    problem, result = run_sim(config, 4, delay)
    expected = odsgd(
        problem,
        4,
        ITERATIONS,
        {
            "lr": LR,
            "mu": MU,
            "local_lr": config.local_lr_at(0.0),
            "latency": latency,
            "warmup": options["odsgd_warmup"],
            "dc_lambda": 2.0 if config.odsgd_local_opt == "dc" else None,  # ALGORITHMS.md: the reference's lambda
        },
    )
    np.testing.assert_allclose(result.reference_params.numpy(), expected, rtol=0, atol=1e-10)


def test_odsgd_dc_reads_lambda_and_ms_decay_and_reports_them():
    """--lam and --ms-decay reach odsgd's dc local optimizer: lambda 0 is the plain local step,
    the defaults (2, 0: the reference code's) are what it reports."""
    base = {"mode": "odsgd", "lr": LR, "momentum": MU, "odsgd_warmup": 3}
    plain = run_sim(AlgorithmConfig(**base), 4, "none")[1].reference_params
    dc_zero = run_sim(AlgorithmConfig(**base, odsgd_local_opt="dc", lam=0.0), 4, "none")[1].reference_params
    dc_default = run_sim(AlgorithmConfig(**base, odsgd_local_opt="dc"), 4, "none")[1].reference_params
    dc_decay = run_sim(AlgorithmConfig(**base, odsgd_local_opt="dc", ms_decay=0.9), 4, "none")[1].reference_params
    assert np.array_equal(plain.numpy(), dc_zero.numpy())
    assert not np.array_equal(plain.numpy(), dc_default.numpy())
    assert not np.array_equal(dc_default.numpy(), dc_decay.numpy())
    config = AlgorithmConfig(**base, odsgd_local_opt="dc")
    assert (config.effective_lambda, config.effective_ms_decay) == (2.0, 0.0)
    assert AlgorithmConfig(**base).effective_lambda == 0.0  # the sgd local step reads no lambda


def test_an_explicit_odsgd_local_lr_follows_the_schedule_and_warm_up():
    config = AlgorithmConfig(
        mode="odsgd", lr=0.1, odsgd_local_lr=0.5, lr_schedule="step:2", lr_decay=0.1, lr_warmup_epochs=1
    )
    assert np.isclose(config.local_lr_at(0.0), 0.05)  # warm-up starts at a tenth
    assert np.isclose(config.local_lr_at(1.0), 0.5) and np.isclose(config.local_lr_at(2.0), 0.05)
    assert AlgorithmConfig(mode="odsgd", lr=0.1).local_lr_at(3.0) == 0.1


def test_pv_per_tensor_counts_one_decision_per_tensor_per_step():
    segments = [0, 2, 3, 5]  # three tensors in the 5-element quadratic
    ring = topology.build("ring", 4)
    problem = Quadratic(4)
    counts = {}
    for scope in ("model", "tensor"):
        config = AlgorithmConfig(mode="pcasgd-pv", lr=LR, momentum=MU, pv_warmup_epochs=0.0, pv_scope=scope)
        result = simulate(
            config,
            4,
            delays.parse("fixed:2"),
            problem,
            problem.initial(),
            ITERATIONS,
            1,
            topology=ring,
            segments=segments,
        )
        counts[scope] = sum(result.decisions[d] for d in ("predict", "clip"))
    assert counts == {"model": 4 * ITERATIONS, "tensor": 3 * 4 * ITERATIONS}
