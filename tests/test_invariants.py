"""ALGORITHMS.md "Checks every implementation must pass", points 1-4 and 6, on the simulator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pcasgd import delays, topology
from pcasgd.algorithms import MODES, AlgorithmConfig
from pcasgd.sim import simulate
from tests.reference import Quadratic

ITERATIONS = 40


def run(config, agents=4, delay="none", topo="ring", iterations=ITERATIONS, seed=0):
    problem = Quadratic(agents, seed=seed)
    schedule = topology.build(topo, agents) if config.family == "decentralized" else None
    return simulate(
        config,
        agents,
        delays.parse(delay),
        problem,
        problem.initial(),
        iterations_per_epoch=iterations,
        epochs=1,
        topology=schedule,
    )


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=0, atol=1e-12))


# -- 1. single agent, no delay: plain SGD with momentum --------------------------------------

SINGLE_AGENT_OPTIONS = {"odsgd": {"odsgd_overlap": False, "odsgd_local_lr": 0.0}}


@pytest.mark.parametrize("mode", MODES)
def test_single_agent_without_delay_is_torch_sgd_with_momentum(mode):
    lr, mu = 0.05, 0.9
    config = AlgorithmConfig(mode=mode, lr=lr, momentum=mu, **SINGLE_AGENT_OPTIONS.get(mode, {}))
    result = run(config, agents=1)

    problem = Quadratic(1)
    weights = problem.initial().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([weights], lr=lr, momentum=mu)
    for _ in range(ITERATIONS):
        weights.grad = problem(0, weights.detach())[0]
        optimizer.step()
    torch.testing.assert_close(result.reference_params, weights.detach(), rtol=0, atol=1e-12)


# -- 2. pcasgd without delayed neighbours is dsgd; ablations are theta = 1 / 0 -------------------


@pytest.mark.parametrize("mode", ["pcasgd", "pcasgd-pv", "predict", "clip"])
@pytest.mark.parametrize("predictor", ["extrapolate", "draft", "taylor"])
@pytest.mark.parametrize(("graph", "clip_weights"), [("ring", "uniform"), ("ring", "rescale"), ("star", "rescale")])
def test_no_delayed_neighbour_gives_dsgd(mode, predictor, graph, clip_weights):
    options = {"predictor": predictor, "clip_weights": clip_weights, "pv_warmup_epochs": 0.0, "theta": 0.3}
    dsgd = run(AlgorithmConfig(mode="dsgd"), topo=graph)
    result = run(AlgorithmConfig(mode=mode, **options), topo=graph)
    assert all(same(a, b) for a, b in zip(result.agent_params, dsgd.agent_params, strict=True))


def test_uniform_clip_weights_differ_from_dsgd_on_a_non_uniform_matrix():
    """The invariant needs a uniform matrix for clip_weights=uniform: the condition is real."""
    dsgd = run(AlgorithmConfig(mode="dsgd"), topo="star")
    clipped = run(AlgorithmConfig(mode="clip", clip_weights="uniform"), topo="star")
    assert not same(clipped.reference_params, dsgd.reference_params)


@pytest.mark.parametrize(("ablation", "theta"), [("predict", 1.0), ("clip", 0.0)])
def test_ablations_are_theta_one_and_zero(ablation, theta):
    expected = run(AlgorithmConfig(mode="pcasgd", theta=theta), delay="uniform:0..4")
    got = run(AlgorithmConfig(mode=ablation, theta=0.5), delay="uniform:0..4")
    assert all(same(a, b) for a, b in zip(got.agent_params, expected.agent_params, strict=True))


def test_draft_predictor_with_zero_lambda_is_asgd():
    asgd = run(AlgorithmConfig(mode="asgd"), delay="fixed:3")
    predict = run(AlgorithmConfig(mode="predict", predictor="draft", lam=0.0), delay="fixed:3")
    assert all(same(a, b) for a, b in zip(predict.agent_params, asgd.agent_params, strict=True))


def test_prediction_changes_the_result_when_neighbours_are_delayed():
    asgd = run(AlgorithmConfig(mode="asgd"), delay="fixed:3")
    predict = run(AlgorithmConfig(mode="predict", lam=1.0), delay="fixed:3")
    assert not same(predict.reference_params, asgd.reference_params)


def test_pv_counts_every_decision():
    result = run(AlgorithmConfig(mode="pcasgd-pv", pv_warmup_epochs=0.25), delay="fixed:2")
    assert sum(result.decisions.values()) == 4 * ITERATIONS
    assert result.decisions["mix"] == 4 * 10  # warm-up: a quarter of the 40 iterations
    assert result.decisions["predict"] + result.decisions["clip"] == 4 * 30


# -- 3. dcasgd with lambda 0 is ps-asgd; sasgd n=1 with synchronous workers is ssgd -------------


@pytest.mark.parametrize("mode", ["dcasgd-c", "dcasgd-a"])
def test_dcasgd_with_zero_lambda_is_ps_asgd(mode):
    base = run(AlgorithmConfig(mode="ps-asgd"), delay="fixed:2")
    result = run(AlgorithmConfig(mode=mode, lam=0.0), delay="fixed:2")
    assert same(result.reference_params, base.reference_params)
    assert not same(run(AlgorithmConfig(mode=mode, lam=0.5), delay="fixed:2").reference_params, base.reference_params)


@pytest.mark.parametrize("delay", ["none", "fixed:3"])
def test_hardsync_sasgd_with_synchronous_workers_is_ssgd(delay):
    """n = 1: workers wait for each update, so a lag costs time and the result is ssgd's."""
    ssgd = run(AlgorithmConfig(mode="ssgd", momentum=0.9))
    sasgd = run(AlgorithmConfig(mode="sasgd", sasgd_n=1, momentum=0.9), delay=delay)
    assert same(sasgd.reference_params, ssgd.reference_params)
    assert set(sasgd.staleness) == {0}


def test_softsync_sasgd_is_not_ssgd():
    ssgd = run(AlgorithmConfig(mode="ssgd", momentum=0.9))
    assert not same(run(AlgorithmConfig(mode="sasgd", sasgd_n=2)).reference_params, ssgd.reference_params)


# -- 4. odsgd with alpha_l = 0 and W~ = W each step is ssgd -------------------------------------


def test_odsgd_without_local_step_or_overlap_is_ssgd():
    ssgd = run(AlgorithmConfig(mode="ssgd"))
    odsgd = run(AlgorithmConfig(mode="odsgd", odsgd_local_lr=0.0, odsgd_overlap=False, odsgd_warmup=0))
    assert same(odsgd.reference_params, ssgd.reference_params)
    overlapped = run(AlgorithmConfig(mode="odsgd", odsgd_local_lr=0.0, odsgd_warmup=0))
    assert not same(overlapped.reference_params, ssgd.reference_params)


# -- 6. reported staleness matches the injected schedule; n-softsync gives <tau> ~ n ------------


def expected_histogram(lag, agents, neighbours, iterations):
    histogram = Counter()
    for k in range(iterations):
        for i in range(agents):
            for j in neighbours(i):
                histogram[min(k, lag(i, j, k))] += 1
    return histogram


@pytest.mark.parametrize("delay", ["fixed:3", "edge:0-1=5,2-3=1", "uniform:0..6", "fixed:1+uniform:0..2"])
@pytest.mark.parametrize("mode", ["asgd", "pcasgd"])
def test_reported_staleness_is_the_injected_schedule(delay, mode):
    schedule = topology.build("ring", 4)
    model = delays.parse(delay)
    result = run(AlgorithmConfig(mode=mode), delay=delay)
    assert result.staleness == expected_histogram(model.lag, 4, schedule.in_neighbours, ITERATIONS)


def test_synchronous_dsgd_sees_no_staleness_whatever_the_delay():
    assert set(run(AlgorithmConfig(mode="dsgd"), delay="fixed:4").staleness) == {0}


def test_parameter_server_staleness_with_injected_lag():
    """Equal-speed workers: the server sees N-1 updates between a pull and its push, plus the lag."""
    result = run(AlgorithmConfig(mode="ps-asgd"), delay="fixed:2")
    steady = {tau: count for tau, count in result.staleness.items() if count > 4}
    assert steady == {3 + 2: result.staleness[5]}
    assert max(result.staleness) == 5


@pytest.mark.parametrize("n", [2, 4, 8])
def test_softsync_mean_staleness_is_about_n(n):
    result = run(AlgorithmConfig(mode="sasgd", sasgd_n=n), agents=8, iterations=60)
    total = sum(result.staleness.values())
    mean = sum(tau * count for tau, count in result.staleness.items()) / total
    assert abs(mean - n) <= max(0.25 * n, 0.5)
    assert max(result.staleness) <= 2 * n


@pytest.mark.parametrize("delay", ["none", "fixed:2"])
def test_odsgd_keeps_one_reduction_in_flight_whatever_the_delay(delay):
    result = run(AlgorithmConfig(mode="odsgd", odsgd_warmup=10), delay=delay)
    assert result.staleness == Counter({0: 4 * 10, 1: 4 * 30})


def test_straggler_does_fewer_iterations_and_its_neighbours_see_staleness():
    result = run(AlgorithmConfig(mode="pcasgd"), delay="straggler:2=3.0")
    assert result.iterations == [40, 40, 14, 40]
    assert max(result.staleness) > 0
    assert np.isfinite(result.reference_params.numpy()).all()


class Exploding(Quadratic):
    """Gradients that blow up after a few calls, to check divergence is caught where it happens."""

    def grad(self, agent, x, call):
        return super().grad(agent, x, call) * (1e200 if call >= 5 else 1.0)


@pytest.mark.parametrize(
    ("mode", "who"), [("pcasgd", "agent 0"), ("ps-asgd", "the server"), ("ssgd", "shared weights"), ("odsgd", "global")]
)
def test_divergence_raises_naming_who_and_when(mode, who):
    from pcasgd.errors import DivergenceError

    problem = Exploding(4)
    schedule = topology.build("ring", 4) if mode == "pcasgd" else None
    config = AlgorithmConfig(mode=mode, odsgd_warmup=0)
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(DivergenceError, match=rf"{who}.*NaN or Inf parameters after iteration \d+"),
    ):
        simulate(config, 4, delays.parse("none"), problem, problem.initial(), 40, 1, topology=schedule)
