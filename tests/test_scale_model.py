"""The paper model of benchmarks/scale_model.py: its traffic formulas and its spectral gaps."""

from __future__ import annotations

import math

import pytest

from benchmarks.scale_model import decentralized, parameter_server, predict, ring_allreduce

MB = 4.0 * 1_000_000  # one million float32 parameters
GBPS = 100e9 / 8


def test_traffic_per_step_follows_each_scheme():
    ring = decentralized(16, "ring", MB, 200.0, GBPS, 5e-6)
    assert ring.messages == 2 and ring.megabytes == pytest.approx(2 * 2 * 4.0)  # params + grad of 2 neighbours
    assert ring.comm_ms == pytest.approx(1e3 * (16e6 / GBPS + 2 * 3 * 5e-6))
    allreduce = ring_allreduce(16, MB, 200.0, GBPS, 5e-6)
    assert allreduce.megabytes == pytest.approx(2 * 15 / 16 * 4.0) and allreduce.messages == 30
    small, large = parameter_server(8, MB, 1.0, GBPS, 0.0), parameter_server(64, MB, 1.0, GBPS, 0.0)
    assert large.comm_ms == pytest.approx(8 * small.comm_ms)  # the server's link grows with the workers
    assert large.step_ms == large.comm_ms  # ... and sets the pace once it is the bottleneck


def test_spectral_gaps_are_the_topologies_own():
    ring = decentralized(16, "ring", MB, 200.0, GBPS, 5e-6)
    assert ring.spectral_gap == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / 16)), abs=1e-12)
    exponential = decentralized(16, "exponential", MB, 200.0, GBPS, 5e-6)
    assert exponential.spectral_gap == pytest.approx(2 / (1 + math.log2(16)), abs=1e-12)


def test_the_default_table_covers_8_to_1024_agents():
    rows = predict(25_557_032, 200.0, 100.0, 5.0)
    assert {row.agents for row in rows} == {8, 16, 32, 64, 128, 256, 512, 1024}
    assert all(row.step_ms >= 200.0 for row in rows)
