"""How well the predict step predicted: each prediction checked against the neighbour's later
snapshot (ALGORITHMS.md, "Revision 2").

A read of neighbour ``j`` with stamp ``s`` and age ``a`` (in ``j``'s steps) stands for ``j`` as it
is when the reader mixes it: about at stamp ``s + a``. The reader keeps its prediction ``x_hat``
and the stale ``x_j^s`` until it reads ``j``'s snapshot stamped ``s + max(1, round(a))`` (the
true ``x``), then scores the prediction by ``|x_hat - x| / |x_j^s - x|``: below 1 the prediction
was nearer the truth than the stale snapshot. The age is the real one, not the capped age the
predictor extrapolated over, so a cap is judged by what it costs. One prediction per neighbour
is followed at a time (two model-sized copies each); one whose target stamp is passed without
being read (a faster neighbour) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class _Followed:
    target: int  # the stamp whose snapshot is the truth
    predicted: Tensor
    stale: Tensor


class PredictionQuality:
    """The predictions one agent follows, per neighbour."""

    def __init__(self) -> None:
        self._followed: dict[int, _Followed] = {}

    def follow(self, source: int, stamp: int, age: float, predicted: Tensor, stale: Tensor) -> None:
        """Keep a prediction of ``source`` made from its snapshot ``stamp`` read at ``age``, unless
        one of that neighbour is followed already."""
        if source not in self._followed:
            target = stamp + max(1, round(age))
            self._followed[source] = _Followed(target, predicted.clone(), stale.clone())

    def score(self, source: int, stamp: int, params: Tensor) -> float | None:
        """The ratio of a followed prediction of ``source`` whose truth is snapshot ``stamp`` with
        ``params`` (None if none is due; a prediction whose target was passed is dropped)."""
        followed = self._followed.get(source)
        if followed is None or stamp < followed.target:
            return None
        del self._followed[source]
        if stamp > followed.target:
            return None
        stale_error = float(torch.linalg.vector_norm(followed.stale - params))
        if stale_error == 0.0:  # the neighbour did not move: nothing to predict
            return None
        return float(torch.linalg.vector_norm(followed.predicted - params)) / stale_error

    def renumber(self, numbers: dict[int, int]) -> None:
        """The agents were renumbered (old number -> new); neighbours missing are forgotten."""
        self._followed = {numbers[j]: f for j, f in self._followed.items() if j in numbers}
