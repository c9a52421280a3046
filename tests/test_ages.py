"""Staleness by age (ALGORITHMS.md, "Revision: staleness under real asynchrony") on the simulator,
the predict step it drives, and the one definition of an epoch for stragglers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.algorithms.consensus import ConsensusAgent, NeighbourRead, Snapshot
from pcasgd.protocol.ages import AGE_BIN, age_bin, histogram_median
from pcasgd.sim import simulate
from tests.reference import Quadratic

ITERATIONS = 40


def run(config: AlgorithmConfig, delay: str = "none", agents: int = 4, iterations: int = ITERATIONS, epochs: int = 1):
    problem = Quadratic(agents, calls=iterations * epochs + 1)
    return simulate(
        config,
        agents,
        delays.parse(delay, seed=1),
        problem,
        problem.initial(),
        iterations_per_epoch=iterations,
        epochs=epochs,
        topology=topology.build("ring", agents),
    )


def test_an_injected_lag_is_exactly_its_age_in_lock_step():
    result = run(AlgorithmConfig(mode="asgd"), delay="fixed:3")
    # each agent's snapshots are read by its 2 ring neighbours at every iteration: k - 3 from k = 3 on
    expected = Counter({0.0: 2, 1.0: 2, 2.0: 2, 3.0: 2 * (ITERATIONS - 3)})
    assert result.ages == {source: expected for source in range(4)}


def test_a_stragglers_snapshots_stay_under_one_of_its_steps_while_their_stamps_fall_behind():
    result = run(AlgorithmConfig(mode="asgd"), delay="straggler:2=3.0")
    assert max(result.staleness) >= 20  # stamps: the straggler's fall further behind every step
    straggler = result.ages[2]
    assert max(straggler) < 1.0  # ages 0, 1/3, 2/3 of its steps (bins 0, 0.25, 0.5)
    assert set(straggler) == {0.0, 0.25, 0.5}
    assert histogram_median(straggler) <= 0.75
    assert set(result.ages[1]) == {0.0}  # unslowed neighbours publish at the instant others read


def test_a_young_straggler_is_fresh_so_pcasgd_is_asgd_until_the_threshold_falls_below_its_age():
    asgd = run(AlgorithmConfig(mode="asgd"), delay="straggler:2=3.0")
    fresh = run(AlgorithmConfig(mode="pcasgd", age_fresh=1.0), delay="straggler:2=3.0")
    strict = run(AlgorithmConfig(mode="pcasgd", age_fresh=0.5), delay="straggler:2=3.0")
    assert all(torch.equal(a, b) for a, b in zip(fresh.agent_params, asgd.agent_params, strict=True))
    assert not torch.allclose(strict.reference_params, asgd.reference_params, rtol=0, atol=1e-9)


def delayed_read(age: float, predictor_inputs: dict[str, torch.Tensor]) -> NeighbourRead:
    snapshot = Snapshot(
        predictor_inputs["params"], predictor_inputs["grad"], 7, displacement=predictor_inputs["displacement"]
    )
    return NeighbourRead(1, 0.5, snapshot, staleness=40, age=age, own_age=age)


def test_the_default_predict_step_moves_a_delayed_neighbour_by_its_age_in_steps():
    """Acceptance: against asgd, the default pcasgd's predict step changes the mix by about the
    neighbour's weight x its (capped) age x one step of the neighbour (its last step, or one SGD
    step at its gradient: the two are equal here). The first version's default (draft) moved it
    by a second-order term, and fails this test."""
    generator = torch.Generator().manual_seed(0)
    grad = 0.1 * torch.randn(1000, generator=generator, dtype=torch.float64)
    inputs = {
        "params": torch.randn(1000, generator=generator, dtype=torch.float64),
        "grad": grad,
        "displacement": -0.1 * grad,  # lr 0.1, the velocity of a steady gradient
    }
    own = torch.randn(1000, generator=generator, dtype=torch.float64)
    read = delayed_read(3.0, inputs)  # capped at the default age_max
    mixes = {}
    for mode in ("asgd", "predict"):
        agent = ConsensusAgent(AlgorithmConfig(mode=mode, lr=0.1), own)
        agent.step(grad, [read], self_weight=0.5)
        mixes[mode] = agent.params
    moved = torch.linalg.vector_norm(mixes["predict"] - mixes["asgd"])
    age = min(3.0, AlgorithmConfig().age_max)
    expected = 0.5 * age * torch.linalg.vector_norm(inputs["displacement"])
    assert 0.9 < float(moved / expected) < 1.2, (float(moved), float(expected))


@pytest.mark.parametrize("predictor", ["extrapolate", "taylor"])
def test_predictors_extrapolate_no_further_than_the_age_cap(predictor):
    generator = torch.Generator().manual_seed(1)
    inputs = {name: torch.randn(50, generator=generator, dtype=torch.float64) for name in ("params", "grad")}
    inputs["displacement"] = torch.randn(50, generator=generator, dtype=torch.float64)
    own = torch.randn(50, generator=generator, dtype=torch.float64)

    def predicted(age: float, cap: float) -> torch.Tensor:
        config = AlgorithmConfig(mode="predict", predictor=predictor, age_max=cap, lr=0.1)
        agent = ConsensusAgent(config, own)
        agent.step(torch.zeros(50, dtype=torch.float64), [delayed_read(age, inputs)], self_weight=0.5)
        return agent.params

    assert torch.equal(predicted(50.0, 4.0), predicted(4.0, 4.0))
    assert not torch.equal(predicted(3.0, 4.0), predicted(4.0, 4.0))


def test_the_draft_predictor_looks_its_own_history_up_at_the_own_step_age():
    """b = 2.5 own steps: the agent's parameters of iteration k - 3 (the last not after k - 2.5)."""
    config = AlgorithmConfig(mode="predict", predictor="draft", lr=1.0, lam=1.0, momentum=0.0)
    agent = ConsensusAgent(config, torch.zeros(1, dtype=torch.float64))
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):  # iterations 0..4 start from 0, 1, 3, 6, 10 (grad -value)
        agent.step(torch.tensor([-value], dtype=torch.float64), [], self_weight=1.0)
    own_now = float(agent.params)  # 15, at iteration 5
    snapshot = Snapshot(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 0)
    read = NeighbourRead(1, 0.5, snapshot, staleness=9, age=9.0, own_age=2.5)
    agent.step(torch.zeros(1, dtype=torch.float64), [read], self_weight=0.5)
    # x_hat = 0 - lr * lam * g * g * (x_now - x_then) with x_then = 3 (iteration 2), mixed with weight 0.5
    assert float(agent.params) == pytest.approx(0.5 * own_now + 0.5 * -(own_now - 3.0))


def test_age_histograms_bin_by_a_quarter_step_and_report_the_medians_bin():
    assert AGE_BIN == 0.25 and age_bin(0.6) == 0.5 and age_bin(2.0) == 2.0
    assert histogram_median(Counter({0.0: 3, 0.5: 1, 4.0: 1})) == 0.25
    assert histogram_median(Counter({0.0: 1, 1.75: 2})) == 2.0
    assert histogram_median(Counter()) is None


def test_a_straggler_follows_the_runs_epochs_for_the_pv_warm_up():
    """One epoch definition (docs/algorithms.md): an agent's epoch is the run's progress it knows
    (the largest iteration count it has heard of), so a 4x straggler leaves pv's warm-up when the
    others do, not after a quarter of the run's epochs of its own iterations."""
    config = AlgorithmConfig(mode="pcasgd-pv", pv_warmup_epochs=0.5)
    result = run(config, delay="straggler:2=4.0", iterations=80)
    straggler_iterations = result.iterations[2]
    assert straggler_iterations == 20
    counted_by_own_iterations = 3 * 40 + straggler_iterations  # the straggler never reaches 40 itself
    assert result.decisions["mix"] <= 3 * 40 + 12 < counted_by_own_iterations, result.decisions


def test_transient_slowdowns_shift_iterations_in_simulated_time():
    steady = run(AlgorithmConfig(mode="asgd"))
    transient = run(AlgorithmConfig(mode="asgd"), delay="transient:0.3=3")
    assert steady.iterations == [ITERATIONS] * 4
    assert all(n < ITERATIONS for n in transient.iterations) and len(set(transient.iterations)) > 1
    assert max(max(h) for h in transient.ages.values()) > 0.0  # readers now see snapshots of earlier instants
