"""Predicting a stale neighbour's current parameters (the PC-ASGD predict step).

Every predictor uses the diagonal Hessian approximation ``H ~ lambda * g (.) g`` of DC-ASGD.
``lam`` is a number or, for the adaptive variant, a tensor of per-coordinate factors. ``age`` is
the neighbour-step age ``a_ij`` (ALGORITHMS.md, "Revision"), capped by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor


def predict_draft(
    stale_params: Tensor,
    stale_grad: Tensor,
    own_now: Tensor,
    own_then: Tensor,
    lr: float,
    lam: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """Author-side draft: ``x_j^s - lr * lam * g_j^s (.) g_j^s (.) (x_i - x_i^(k - tau))``.

    Corrects the neighbour's stale parameters by the agent's own displacement over the same delay
    window; with ``lam = 0`` it returns the stale snapshot unchanged (plain asynchronous mixing).
    ``out``: where to write the result (a new tensor when None).
    """
    result = torch.sub(own_now, own_then, out=out)
    result.mul_(stale_grad).mul_(stale_grad).mul_(lam)
    return result.mul_(-lr).add_(stale_params)


def predict_taylor(
    stale_params: Tensor,
    stale_grad: Tensor,
    own_now: Tensor,
    age: float,
    lr: float,
    lam: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """[choice] Extrapolate the neighbour ``age`` SGD steps ahead with a Taylor gradient.

    ``g_hat = g_j^s + lam * g_j^s (.) g_j^s (.) (x_i - x_j^s)``; ``x_hat = x_j^s - lr * age * g_hat``,
    taking the agent's own parameters ``x_i`` as the point the neighbour has moved towards.
    ``out``: where to write the result (a new tensor when None).
    """
    result = torch.sub(own_now, stale_params, out=out)
    result.mul_(stale_grad).mul_(stale_grad).mul_(lam).add_(stale_grad)  # g_hat
    return result.mul_(-lr * age).add_(stale_params)


def predict_extrapolate(
    stale_params: Tensor,
    stale_grad: Tensor,
    displacement: Tensor,
    age: float,
    lr: float,
    lam: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """[choice] The neighbour's last local step, continued for ``age`` more steps (first order).

    ``x_hat = x_j^s + age * d_j - lr * lam * age**2 / 2 * g_j^s (.) g_j^s (.) d_j``: along the
    path ``x_j^s + m d_j`` the Taylor gradient ``g_j^s + lam g (.) g (.) m d_j`` moves each step's
    gradient part ``-lr g`` by ``-lr lam g (.) g (.) m d_j``; integrated over ``m`` in ``[0, age]``.
    With ``lam = 0`` it is plain linear extrapolation. ``out``: where to write the result.
    """
    result = torch.mul(displacement, stale_grad, out=out)
    result.mul_(stale_grad).mul_(lam).mul_(-0.5 * lr * age * age)
    return result.add_(displacement, alpha=age).add_(stale_params)


def momentum_sums(momentum: float, age: float) -> tuple[float, float]:
    """``(sum_{m=1..age} mu^m, sum_{m=1..age} (1 - mu^m) / (1 - mu))`` in closed form, so that a
    fractional ``age`` continues the sums smoothly (``mu = 0``: ``(0, age)``)."""
    if momentum == 0.0:
        return 0.0, age
    geometric = momentum * (1.0 - momentum**age) / (1.0 - momentum)
    return geometric, (age - geometric) / (1.0 - momentum)


def predict_momentum(
    stale_params: Tensor,
    stale_grad: Tensor,
    velocity: Tensor,
    own_now: Tensor,
    age: float,
    lr: float,
    momentum: float,
    lam: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """[choice] Continue the neighbour's own momentum-SGD trajectory for ``age`` steps (ALGORITHMS.md,
    "Revision 2"): ``x_hat = x_j^s + sum_{m=1..age} [mu^m v_j^s - lr (1 - mu^m) / (1 - mu) g_hat]``
    with the velocity ``v_j^s`` the neighbour published with ``x_j^s`` (the step that brought it
    there) and ``g_hat = g_j^s + lam * g_j^s (.) g_j^s (.) (x_i - x_j^s)`` (the DC-ASGD-corrected
    gradient of :func:`predict_taylor`), held for the ``age`` steps. ``momentum = 0`` gives
    :func:`predict_taylor`; a zero gradient gives pure momentum extrapolation. The neighbour's own
    mixing with its neighbours is not predicted. ``out``: where to write the result.
    """
    velocity_sum, gradient_sum = momentum_sums(momentum, age)
    result = torch.sub(own_now, stale_params, out=out)
    result.mul_(stale_grad).mul_(stale_grad).mul_(lam).add_(stale_grad)  # g_hat
    result.mul_(-lr * gradient_sum).add_(stale_params)
    return result.add_(velocity, alpha=velocity_sum)


def predict_trajectory(stale_params: Tensor, velocity: Tensor, age: float, out: Tensor | None = None) -> Tensor:
    """[choice] ``x_hat = x_j^s + age * u_j``, with ``u_j`` the neighbour's mean step between the
    last two of its snapshots this agent read (its whole motion: its local steps and its own
    mixing). Nothing beyond the parameters travels: on a slow link it reads what asgd reads."""
    return torch.add(stale_params, velocity, alpha=age, out=out)


def adaptive_lambda(lam0: float, mean_square: Tensor, eps: float) -> Tensor:
    """DC-ASGD-a's per-coordinate factor ``lam0 / sqrt(MeanSquare + eps)``."""
    return lam0 / torch.sqrt(mean_square + eps)


def update_mean_square(mean_square: Tensor | None, grad: Tensor, decay: float) -> Tensor:
    """``MS <- decay * MS + (1 - decay) * g (.) g``; the first call starts from zero."""
    square = grad * grad
    if mean_square is None:
        return (1.0 - decay) * square
    return decay * mean_square + (1.0 - decay) * square
