from __future__ import annotations

import pytest

from pcasgd import delays
from pcasgd.errors import DelaySpecError


def test_none_has_no_lag_and_no_slowdown():
    model = delays.parse("none")
    assert model.lag(0, 1, 5) == 0 and model.slowdown(3) == 1.0 and model.max_lag == 0


def test_fixed_lag_applies_to_every_edge():
    model = delays.parse("fixed:4")
    assert {model.lag(i, j, k) for i in range(3) for j in range(3) for k in range(5)} == {4}
    assert model.max_lag == 4


def test_edge_lag_is_symmetric_and_only_on_named_edges():
    model = delays.parse("edge:0-1=4, 3-2=2")
    assert model.lag(0, 1, 0) == model.lag(1, 0, 7) == 4
    assert model.lag(2, 3, 1) == 2
    assert model.lag(1, 2, 1) == 0
    assert model.max_lag == 4


def test_uniform_lag_is_bounded_seeded_and_varies():
    model = delays.parse("uniform:1..5", seed=7)
    values = [model.lag(0, 1, k) for k in range(300)]
    assert set(values) == {1, 2, 3, 4, 5}
    assert values == [delays.parse("uniform:1..5", seed=7).lag(0, 1, k) for k in range(300)]
    assert values != [delays.parse("uniform:1..5", seed=8).lag(0, 1, k) for k in range(300)]
    assert model.max_lag == 5


def test_straggler_slows_named_ranks():
    model = delays.parse("straggler:2=3.0,0=1.5")
    assert (model.slowdown(2), model.slowdown(0), model.slowdown(1)) == (3.0, 1.5, 1.0)
    assert not model.has_lag


def test_terms_combine():
    model = delays.parse("fixed:2+edge:0-1=1+straggler:1=2")
    assert model.lag(0, 1, 0) == 3 and model.lag(1, 2, 0) == 2 and model.slowdown(1) == 2.0


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "empty spec"),
        ("fixed:", "unknown term"),
        ("fixed:-1", "unknown term"),
        ("uniform:5..1", "0 <= A <= B"),
        ("edge:0-0=2", "joins a rank to itself"),
        ("edge:0=2", "cannot read '0=2'"),
        ("straggler:1=0", "must be > 0"),
        ("straggler:1=fast", "cannot read"),
        ("gaussian:3", "unknown term 'gaussian:3'"),
    ],
)
def test_malformed_specs_quote_the_spec_and_list_accepted_forms(spec, reason):
    with pytest.raises(DelaySpecError) as caught:
        delays.parse(spec)
    message = str(caught.value)
    assert repr(spec) in message and reason in message and "fixed:D" in message and "straggler:R=F" in message


def test_spec_must_fit_the_run():
    with pytest.raises(DelaySpecError, match=r"names rank\(s\) \[5\], but the run has 4"):
        delays.parse("straggler:5=2").check_fits(4)
    from pcasgd.topology import ring

    with pytest.raises(DelaySpecError, match="edge 0-2, which is not in the topology"):
        delays.parse("edge:0-2=1").check_fits(4, ring(4))
