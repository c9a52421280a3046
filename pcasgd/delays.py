"""Seeded, deterministic delay and straggler models, parsed from a spec string.

Two kinds of effect, combinable with ``+`` (for example ``fixed:2+straggler:3=2.0``):

* a **lag**: how many iterations old the snapshot is that agent ``reader`` reads from agent
  ``source`` at the reader's iteration ``k`` (``none``, ``fixed:D``, ``edge:I-J=D,...``,
  ``uniform:A..B``). Lags of several terms add up.
* a **slowdown**: a factor on a rank's compute time per iteration: persistent
  (``straggler:R=F,...``) or transient (``transient:P=F``: each iteration of each rank, with
  probability ``P``, takes ``F`` times as long). Factors of several terms multiply.

Every value is a pure function of ``(seed, reader, source, k)`` (a transient slowdown of
``(seed, rank, k)``), so a schedule can be replayed exactly by the simulator and by the MPI
runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from pcasgd.errors import DelaySpecError

ACCEPTED_FORMS = (
    "none | fixed:D | edge:I-J=D[,I-J=D...] | uniform:A..B | straggler:R=F[,R=F...] | transient:P=F"
    " (combine with '+', e.g. fixed:2+straggler:1=3.0)"
)


@dataclass(frozen=True)
class DelayModel:
    """The parsed form of a delay spec. Build it with :func:`parse`."""

    spec: str = "none"
    fixed: int = 0
    edges: dict[tuple[int, int], int] = field(default_factory=dict)
    uniform: tuple[int, int] | None = None
    slowdowns: dict[int, float] = field(default_factory=dict)
    transient: tuple[float, float] | None = None  # (probability, factor) per rank and iteration
    seed: int = 0

    def lag(self, reader: int, source: int, iteration: int) -> int:
        """Iterations by which ``reader``'s view of ``source`` lags at ``reader``'s ``iteration``."""
        total = self.fixed + self.edges.get((min(reader, source), max(reader, source)), 0)
        if self.uniform is not None:
            low, high = self.uniform
            rng = np.random.default_rng([self.seed, reader, source, iteration])
            total += int(rng.integers(low, high + 1))
        return total

    @property
    def max_lag(self) -> int:
        """The largest lag the model can produce (sizes snapshot rings)."""
        return self.fixed + max(self.edges.values(), default=0) + (self.uniform[1] if self.uniform else 0)

    @property
    def has_lag(self) -> bool:
        return self.max_lag > 0

    def slowdown(self, rank: int) -> float:
        """The persistent factor on ``rank``'s compute time per iteration (1.0 = nominal speed)."""
        return self.slowdowns.get(rank, 1.0)

    def step_slowdown(self, rank: int, iteration: int) -> float:
        """Factor on the compute time of ``rank``'s ``iteration``: persistent times transient."""
        factor = self.slowdown(rank)
        if self.transient is not None:
            probability, transient = self.transient
            if np.random.default_rng([self.seed, rank, iteration, 1]).random() < probability:
                factor *= transient
        return factor

    @property
    def has_slowdown(self) -> bool:
        """Whether any rank is ever slowed (lock-step runs refuse it: waiting makes it moot)."""
        return bool(self.slowdowns) or self.transient is not None

    def check_fits(self, size: int, edges: np.ndarray | None = None) -> None:
        """Raise :class:`DelaySpecError` if the spec names ranks or edges the run does not have."""
        ranks = set(self.slowdowns) | {r for edge in self.edges for r in edge}
        too_big = sorted(r for r in ranks if r >= size)
        if too_big:
            raise DelaySpecError(f"delay spec {self.spec!r} names rank(s) {too_big}, but the run has {size}")
        if edges is not None:
            for i, j in self.edges:
                if not (edges[i, j] or edges[j, i]):
                    raise DelaySpecError(f"delay spec {self.spec!r} names edge {i}-{j}, which is not in the topology")


_INT = r"\d+"
_FLOAT = r"\d+(?:\.\d*)?|\.\d+"


def _bad(spec: str, reason: str) -> DelaySpecError:
    return DelaySpecError(f"bad delay spec {spec!r}: {reason}; accepted forms: {ACCEPTED_FORMS}")


def _pairs(spec: str, body: str, key_pattern: str, value_pattern: str) -> list[tuple[str, str]]:
    items = body.split(",") if body else []
    if not items:
        raise _bad(spec, "nothing after ':'")
    pairs = []
    for item in items:
        match = re.fullmatch(rf"\s*({key_pattern})\s*=\s*({value_pattern})\s*", item)
        if not match:
            raise _bad(spec, f"cannot read {item!r}")
        pairs.append((match.group(1), match.group(2)))
    return pairs


def parse(spec: str, seed: int = 0) -> DelayModel:
    """Parse a delay spec (see :data:`ACCEPTED_FORMS`) into a :class:`DelayModel`."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty spec")
    fixed = 0
    edges: dict[tuple[int, int], int] = {}
    uniform: tuple[int, int] | None = None
    slowdowns: dict[int, float] = {}
    transient: tuple[float, float] | None = None
    for term in spec.strip().split("+"):
        kind, colon, body = term.strip().partition(":")
        if kind == "none" and not colon:
            continue
        if kind == "fixed" and re.fullmatch(_INT, body.strip()):
            fixed += int(body)
        elif kind == "uniform":
            match = re.fullmatch(rf"\s*({_INT})\s*\.\.\s*({_INT})\s*", body)
            if not match or int(match.group(1)) > int(match.group(2)):
                raise _bad(spec, "uniform needs A..B with integers 0 <= A <= B")
            if uniform is not None:
                raise _bad(spec, "uniform given twice")
            uniform = (int(match.group(1)), int(match.group(2)))
        elif kind == "edge":
            for key, value in _pairs(spec, body, rf"{_INT}\s*-\s*{_INT}", _INT):
                i, j = (int(part) for part in key.split("-"))
                if i == j:
                    raise _bad(spec, f"edge {i}-{j} joins a rank to itself")
                edge = (min(i, j), max(i, j))
                edges[edge] = edges.get(edge, 0) + int(value)
        elif kind == "straggler":
            for key, value in _pairs(spec, body, _INT, _FLOAT):
                factor = float(value)
                if factor <= 0:
                    raise _bad(spec, f"slowdown of rank {key} must be > 0")
                slowdowns[int(key)] = slowdowns.get(int(key), 1.0) * factor
        elif kind == "transient":
            match = re.fullmatch(rf"\s*({_FLOAT})\s*=\s*({_FLOAT})\s*", body)
            if not match or not 0 < float(match.group(1)) <= 1 or float(match.group(2)) <= 0:
                raise _bad(spec, "transient needs P=F with a probability 0 < P <= 1 and a factor F > 0")
            if transient is not None:
                raise _bad(spec, "transient given twice")
            transient = (float(match.group(1)), float(match.group(2)))
        else:
            raise _bad(spec, f"unknown term {term.strip()!r}")
    return DelayModel(
        spec=spec.strip(),
        fixed=fixed,
        edges=edges,
        uniform=uniform,
        slowdowns=slowdowns,
        transient=transient,
        seed=seed,
    )
