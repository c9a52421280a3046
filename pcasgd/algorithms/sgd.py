"""The momentum step every mode shares."""

from __future__ import annotations

from torch import Tensor


def momentum_velocity(velocity: Tensor, step_direction: Tensor, lr: float, momentum: float) -> Tensor:
    """``v <- momentum * v - lr * d``; the caller then adds ``v`` to the parameters.

    With ``d`` the gradient this is ``torch.optim.SGD(momentum=...)`` without dampening or
    Nesterov, written in the velocity form that ALGORITHMS.md uses.
    """
    return momentum * velocity - lr * step_direction
