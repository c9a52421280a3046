from __future__ import annotations

import math

import numpy as np
import pytest

from pcasgd import topology
from pcasgd.errors import TopologyError


@pytest.mark.parametrize(
    ("spec", "n", "degree"),
    [("ring", 8, 2), ("torus", 16, 4), ("torus:2x4", 8, 3), ("exp", 16, 4), ("full", 5, 4), ("random:3", 10, 3)],
)
def test_regular_graphs_have_their_degree_and_doubly_stochastic_weights(spec, n, degree):
    built = topology.build(spec, n)
    assert set(built.adjacency.sum(axis=1).tolist()) == {degree}
    np.testing.assert_allclose(built.weights.sum(axis=0), 1.0)
    np.testing.assert_allclose(built.weights.sum(axis=1), 1.0)
    assert 0 < built.spectral_gap() <= 1


def test_star_gets_metropolis_weights_by_default():
    built = topology.build("star", 5)
    assert built.weights[0, 1] == pytest.approx(1 / 5)
    assert built.weights[1, 1] == pytest.approx(4 / 5)
    with pytest.raises(TopologyError, match="column 0 sums to 2"):
        topology.build("star", 5, weights="uniform")


def test_exponential_graph_is_directed_and_reads_powers_of_two_back():
    adjacency = topology.exponential(16)
    assert topology.Topology("exp", adjacency, topology.uniform_weights(adjacency)).in_neighbours(0) == [8, 12, 14, 15]
    with pytest.raises(TopologyError, match="undirected"):
        topology.metropolis_hastings_weights(adjacency)


def test_spectral_gap_of_16_ring_matches_closed_form():
    """Uniform 1/3 weights: eigenvalues 1/3 + 2/3 cos(2 pi k / n); gap = 2/3 (1 - cos(2 pi / n))."""
    assert topology.build("ring", 16).spectral_gap() == pytest.approx(
        2 / 3 * (1 - math.cos(2 * math.pi / 16)), abs=1e-12
    )


def test_spectral_gap_of_16_exponential_matches_closed_form():
    """Static exponential graph, n = 2^t, uniform weights: rho = 1 - 2 / (1 + log2 n) (Ying et al. 2021)."""
    assert topology.build("exp", 16).spectral_gap() == pytest.approx(2 / (1 + math.log2(16)), abs=1e-12)


def test_fully_connected_averages_in_one_step():
    assert topology.build("full", 7).spectral_gap() == pytest.approx(1.0)


def test_random_regular_is_seeded_and_connected():
    a = topology.random_regular(20, 4, seed=3)
    assert np.array_equal(a, topology.random_regular(20, 4, seed=3))
    assert not np.array_equal(a, topology.random_regular(20, 4, seed=4))
    assert np.array_equal(a, a.T)
    topology.validate(topology.uniform_weights(a), a)
    with pytest.raises(TopologyError, match="n\\*k even"):
        topology.random_regular(5, 3, seed=0)


def test_one_peer_exponential_averages_exactly_over_one_period():
    schedule = topology.build("one-peer-exp", 16)
    steps = [step for step, _ in zip(iter(schedule), range(4), strict=False)]
    assert [s.in_neighbours(0) for s in steps] == [[15], [14], [12], [8]]
    product = np.eye(16)
    for step in steps:
        product = step.weights @ product
    np.testing.assert_allclose(product, np.full((16, 16), 1 / 16), atol=1e-12)
    assert schedule.at(5).in_neighbours(0) == [14]
    assert schedule.spectral_gap() == pytest.approx(1.0)


def test_validate_rejects_row_stochastic_only_matrix():
    weights = np.array([[0.5, 0.5, 0.0], [0.2, 0.6, 0.2], [0.0, 0.9, 0.1]])
    with pytest.raises(TopologyError, match=r"column 0 sums to 0.7, not 1 \(row-stochastic only"):
        topology.validate(weights, topology.fully_connected(3))


def test_validate_rejects_disconnected_graph():
    adjacency = np.zeros((4, 4), dtype=bool)
    adjacency[0, 1] = adjacency[1, 0] = adjacency[2, 3] = adjacency[3, 2] = True
    with pytest.raises(TopologyError, match=r"not strongly connected: agents \[2, 3\]"):
        topology.validate(topology.uniform_weights(adjacency), adjacency)


def test_validate_rejects_negative_entry():
    weights = np.array([[1.2, -0.2], [-0.2, 1.2]])
    with pytest.raises(TopologyError, match=r"entry \(0, 1\) is negative: -0.2"):
        topology.validate(weights)


def test_validate_rejects_weight_off_the_graph():
    path = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    everyone = np.full((3, 3), 1 / 3)
    with pytest.raises(TopologyError, match=r"entry \(0, 2\) = 0.333333, but agent 0 does not read agent 2"):
        topology.validate(everyone, path)


def test_validate_rejects_bad_shapes():
    with pytest.raises(TopologyError, match="square"):
        topology.validate(np.ones((2, 3)) / 3)
    with pytest.raises(TopologyError, match="graph has 3 agents"):
        topology.validate(np.eye(2), topology.ring(3))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("hypercube", "unknown topology 'hypercube'"), ("torus:3x3", "9 agents, the run has 8"), ("random:x", "random:K")],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(TopologyError, match=message):
        topology.build(spec, 8)


@pytest.mark.parametrize("spec", ["ring", "exponential", "torus", "random:4", "star", "full"])
def test_the_spectral_gap_of_a_large_graph_is_the_dense_one_without_a_dense_decomposition(spec):
    n = topology.DENSE_SPECTRAL_GAP_AGENTS + 44
    weights = topology.build(spec, n).weights
    dense = 1.0 - np.linalg.norm(weights - np.full((n, n), 1.0 / n), ord=2)
    assert abs(topology.spectral_gap(weights) - dense) < 1e-9


def test_survivors_of_a_ring_keep_their_edges_renumbered():
    remaining = topology.survivors(topology.build("ring", 4), [0, 1, 3])
    # ring 0-1-2-3-0 without 2: the path 3-0-1, i.e. new agents 2-0-1
    expected = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(remaining.adjacency, expected)
    np.testing.assert_allclose(remaining.weights.sum(axis=0), 1.0)
    np.testing.assert_allclose(remaining.weights.sum(axis=1), 1.0)
    assert remaining.weights[1, 2] == 0.0
    assert "without [2]" in remaining.name


def test_survivors_rejoin_a_graph_the_losses_cut():
    # ring of 6 without 1 and 4: {0, 5} and {2, 3} are cut apart; one new edge joins 0 and 2
    remaining = topology.survivors(topology.build("ring", 6), [0, 2, 3, 5])
    assert remaining.adjacency[0, 1] and remaining.adjacency[1, 0]
    assert remaining.adjacency.sum() == 2 * 3  # the two old edges and the new one
    assert remaining.spectral_gap() > 0


def test_survivors_of_a_directed_or_time_varying_graph_are_undirected_and_doubly_stochastic():
    for schedule in (topology.build("exp", 8), topology.build("one-peer-exp", 8)):
        remaining = topology.survivors(schedule, [0, 1, 2, 4, 5, 6, 7])
        np.testing.assert_array_equal(remaining.adjacency, remaining.adjacency.T)
        assert topology.validate(remaining.weights, remaining.adjacency) > 0


def test_a_lone_survivor_keeps_its_own_weights_and_bad_survivor_lists_are_errors():
    assert topology.survivors(topology.build("ring", 4), [2]).weights.tolist() == [[1.0]]
    for alive in ([], [0, 0], [4]):
        with pytest.raises(TopologyError, match="distinct agents"):
            topology.survivors(topology.build("ring", 4), alive)
