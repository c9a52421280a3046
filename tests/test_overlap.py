"""ALGORITHMS.md "Revision 2" without MPI: the momentum predictor, ages from stamps, the
prediction-quality metric, the draft-only history, the rings' sizes and overlap in the simulator."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.algorithms.consensus import ConsensusAgent
from pcasgd.algorithms.prediction import momentum_sums, predict_momentum, predict_taylor
from pcasgd.algorithms.quality import PredictionQuality
from pcasgd.app.train import run_training
from pcasgd.cli import build_parser, run_config_from
from pcasgd.engine import EpochStats
from pcasgd.errors import ConfigError
from pcasgd.protocol.ages import Latest, snapshot_ages
from pcasgd.protocol.ring import dsgd_lead, ring_slots
from pcasgd.runtime import totals
from pcasgd.sim import simulate
from tests.reference import Quadratic


def vectors(n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(20, generator=generator, dtype=torch.float64) for _ in range(n)]


# -- the momentum predictor ---------------------------------------------------------------------


def test_the_momentum_predictor_continues_the_publishers_momentum_steps_one_by_one():
    """NumPy reference: ``age`` steps of v <- mu v - lr g_hat, x <- x + v, from the published v."""
    params, grad, velocity, own = (v.numpy() for v in vectors(4, 0))
    lr, mu, lam, age = 0.1, 0.9, 0.7, 3
    g_hat = grad + lam * grad * grad * (own - params)
    x, v = params.copy(), velocity.copy()
    for _ in range(age):
        v = mu * v - lr * g_hat
        x = x + v
    got = predict_momentum(*(torch.from_numpy(a) for a in (params, grad, velocity, own)), age, lr, mu, lam)
    np.testing.assert_allclose(got.numpy(), x, rtol=0, atol=1e-12)


def test_the_momentum_predictor_is_taylor_without_momentum_and_pure_momentum_without_a_gradient():
    params, grad, velocity, own = vectors(4, 1)
    taylor = predict_taylor(params, grad, own, 2.5, 0.1, 0.3)
    assert torch.allclose(predict_momentum(params, grad, velocity, own, 2.5, 0.1, 0.0, 0.3), taylor, atol=1e-12)
    coasting = predict_momentum(params, torch.zeros_like(grad), velocity, own, 2.0, 0.1, 0.5, 0.3)
    assert torch.allclose(coasting, params + (0.5 + 0.25) * velocity, atol=1e-12)


def test_fractional_ages_continue_the_closed_form_sums_between_whole_steps():
    mu = 0.9
    for age in (1, 2, 5):
        geometric, linear = momentum_sums(mu, float(age))
        assert geometric == pytest.approx(sum(mu**m for m in range(1, age + 1)))
        assert linear == pytest.approx(sum((1 - mu**m) / (1 - mu) for m in range(1, age + 1)))
    below, between, above = (momentum_sums(mu, a)[0] for a in (1.0, 1.5, 2.0))
    assert below < between < above


# -- ages from stamps ---------------------------------------------------------------------------


def test_an_age_counts_whole_stamps_behind_the_newest_and_at_most_one_step_of_its_aging():
    latest = Latest(stamp=10, published=100.0, period=2.0)
    assert snapshot_ages(10, latest, now=101.0, own_period=1.0) == (0.5, 1.0)
    assert snapshot_ages(7, latest, now=101.0, own_period=1.0) == (3.5, 7.0)  # an injected lag of 3
    assert snapshot_ages(10, latest, now=150.0, own_period=1.0)[0] == 1.0  # capped: a rank that stopped
    assert snapshot_ages(10, latest, now=99.0, own_period=1.0)[0] == 0.0  # clocks a little apart


def test_a_paused_publisher_ages_only_until_its_pause_began():
    paused = Latest(stamp=10, published=100.0, period=4.0, paused=101.0)
    assert snapshot_ages(10, paused, now=130.0, own_period=4.0)[0] == 0.25


# -- prediction quality -------------------------------------------------------------------------


def test_a_prediction_is_scored_against_the_snapshot_stamped_its_age_later():
    quality = PredictionQuality()
    truth = torch.tensor([1.0, 1.0])
    quality.follow(3, stamp=5, age=2.2, predicted=torch.tensor([0.8, 1.0]), stale=torch.zeros(2))
    assert quality.score(3, 6, truth) is None  # not yet its target, stamp 7
    ratio = quality.score(3, 7, truth)
    assert ratio == pytest.approx(0.2 / math.sqrt(2))
    assert quality.score(3, 7, truth) is None  # scored once
    quality.follow(3, stamp=8, age=0.3, predicted=truth, stale=torch.zeros(2))
    assert quality.score(3, 10, truth) is None  # its target (9) was passed: dropped
    assert quality.score(3, 9, truth) is None


def sim_quality(predictor: str, delay: str):
    flags = ["train", "--backend", "sim", "--agents", "4", "--mode", "pcasgd", "--topology", "ring"]
    flags += ["--dataset", "digits", "--model", "mlp", "--epochs", "6", "--seed", "0", "--delay", delay]
    flags += ["--predictor", predictor, "--age-fresh", "0", "--age-max", "8"]  # every read predicted, uncapped
    return run_config_from(build_parser().parse_args(flags))


@pytest.mark.parametrize(("delay", "target"), [("fixed:1", 0.45), ("fixed:4", None)])
def test_the_momentum_predictor_lands_nearer_the_truth_than_taylor_on_the_simulator(delay, target, tmp_path):
    """The median ratio |x_hat - x| / |x_stale - x| (ring, digits, every read predicted): the
    momentum predictor meets Revision 2's 0.45 one step ahead (taylor, which ignores momentum,
    does not); four steps ahead it misses it (docs/algorithms.md) but still beats taylor."""
    medians = {}
    for predictor in ("momentum", "taylor"):
        summary = run_training(sim_quality(predictor, delay), tmp_path / predictor, overwrite=True)
        quality = summary["prediction_quality"]
        assert quality["scored"] > 100, quality
        medians[predictor] = quality["median_below"]
        assert summary["final"]["prediction_ratio_median"] is not None
    assert medians["momentum"] < medians["taylor"], medians
    if target is not None:
        assert medians["momentum"] <= target < medians["taylor"], medians


# -- what an agent keeps ------------------------------------------------------------------------


@pytest.mark.parametrize(("predictor", "kept"), [("draft", 4), ("taylor", 0), ("momentum", 0), ("extrapolate", 0)])
def test_only_the_draft_predictor_keeps_and_checkpoints_a_history_of_its_own_parameters(predictor, kept):
    agent = ConsensusAgent(AlgorithmConfig(mode="pcasgd", predictor=predictor), torch.zeros(3))
    for _ in range(4):
        agent.step(torch.ones(3), [], self_weight=1.0)
    assert len(agent.state_dict()["history"]) == kept


def test_momentum_and_extrapolate_snapshots_carry_the_displacement_and_overlap_is_decentralized_only():
    assert AlgorithmConfig(predictor="momentum").publishes_displacement
    assert not AlgorithmConfig(predictor="taylor").publishes_displacement
    assert not AlgorithmConfig(mode="clip", predictor="momentum").publishes_displacement
    with pytest.raises(ConfigError, match="--overlap is for the decentralized modes"):
        AlgorithmConfig(mode="ssgd", overlap=True)


# -- rings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "n", "blocking", "overlapped"),
    [("ring", 4, 1, 2), ("full", 4, 1, 2), ("exponential", 8, 3, 6), ("one-peer-exp", 8, 3, 6), ("torus:2x4", 8, 1, 2)],
)
def test_a_dsgd_neighbour_leads_a_waiting_agent_by_its_distance_back_to_it(spec, n, blocking, overlapped):
    """On a directed graph an in-neighbour that does not wait for this agent directly runs ahead
    as far as its path back allows (exponential, 8 agents: i-1 reaches i in 3 hops), twice as far
    with overlap (each hop may be a step behind)."""
    schedule = topology.build(spec, n)
    assert (dsgd_lead(schedule, False), dsgd_lead(schedule, True)) == (blocking, overlapped)


def test_rings_hold_the_injected_lag_the_overlap_and_a_dsgd_lead():
    exp8, ring4 = topology.build("exponential", 8), topology.build("ring", 4)
    none, lag3 = delays.parse("none"), delays.parse("fixed:3")
    assert ring_slots(AlgorithmConfig(mode="asgd"), lag3, ring4, deterministic=False) == 5
    assert ring_slots(AlgorithmConfig(mode="asgd", overlap=True), lag3, ring4, deterministic=False) == 7
    assert ring_slots(AlgorithmConfig(mode="dsgd"), none, exp8, deterministic=False) == 4  # lead 3, then k
    assert ring_slots(AlgorithmConfig(mode="dsgd", overlap=True), none, exp8, deterministic=False) == 8
    assert ring_slots(AlgorithmConfig(mode="dsgd"), none, exp8, deterministic=True) == 2  # lock-step


# -- overlap in the simulator ---------------------------------------------------------------------


def test_dsgd_with_overlap_mixes_exactly_the_snapshot_one_step_before():
    problem = Quadratic(4)
    config = AlgorithmConfig(mode="dsgd", overlap=True, lr=0.05)
    ring = topology.build("ring", 4)
    result = simulate(config, 4, delays.parse("none"), problem, problem.initial(), 20, 1, topology=ring)
    assert result.staleness == Counter({0: 8, 1: 8 * 19})  # 2 reads each of 4 agents; k = 0 reads stamp 0
    assert set(result.ages[0]) == {0.0, 1.0}


def test_overlap_in_the_simulator_changes_the_weights_and_keeps_a_straggler_below_two_steps():
    problem = Quadratic(4, calls=200)
    runs = {}
    for overlap in (False, True):
        config = AlgorithmConfig(mode="asgd", overlap=overlap, lr=0.05)
        straggler, ring = delays.parse("straggler:2=3.0"), topology.build("ring", 4)
        runs[overlap] = simulate(config, 4, straggler, Quadratic(4, calls=200), problem.initial(), 40, 1, topology=ring)
    assert not torch.equal(runs[True].reference_params, runs[False].reference_params)
    assert max(runs[True].ages[2]) < 2.0 and max(runs[False].ages[2]) < 1.0


# -- the totals in a window header ------------------------------------------------------------------


def test_header_totals_carry_histograms_so_a_record_has_its_own_histograms_and_maxima():
    stats = EpochStats()
    stats.add_staleness([0, 2, 40])
    stats.add_ages([0.3, 1.1])
    stats.add_prediction_ratios([0.31, 0.52])
    first = totals.decode(totals.encode(stats, iterations=5, samples=160))
    stats.add_staleness([1])
    stats.add_ages([0.6])
    second = totals.decode(totals.encode(stats, iterations=6, samples=192))
    everything, last = totals.stats_between(first, {}), totals.stats_between(second, first)
    assert everything.staleness_histogram == Counter({0: 1, 2: 1, 32: 1})  # the last bin: 32 or more
    assert everything.staleness_max == 40 and last.staleness_max == 1
    assert last.staleness_histogram == Counter({1: 1}) and last.age_histogram == Counter({0.5: 1})
    assert last.age_top == 0.75 and last.prediction_ratio_median is None
    assert everything.prediction_histogram == Counter({0.3: 1, 0.5: 1})
    assert everything.prediction_ratio_median == pytest.approx(0.35)
