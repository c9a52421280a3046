"""Predicting a stale neighbour's current parameters (the PC-ASGD predict step).

Both predictors use the diagonal Hessian approximation ``H ~ lambda * g (.) g`` of DC-ASGD.
``lam`` is a number or, for the adaptive variant, a tensor of per-coordinate factors.
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
    staleness: int,
    lr: float,
    lam: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """[choice] Extrapolate the neighbour ``staleness`` SGD steps ahead with a Taylor gradient.

    ``g_hat = g_j^s + lam * g_j^s (.) g_j^s (.) (x_i - x_j^s)``; ``x_hat = x_j^s - lr * tau * g_hat``,
    taking the agent's own parameters ``x_i`` as the point the neighbour has moved towards.
    ``out``: where to write the result (a new tensor when None).
    """
    result = torch.sub(own_now, stale_params, out=out)
    result.mul_(stale_grad).mul_(stale_grad).mul_(lam).add_(stale_grad)  # g_hat
    return result.mul_(-lr * staleness).add_(stale_params)


def adaptive_lambda(lam0: float, mean_square: Tensor, eps: float) -> Tensor:
    """DC-ASGD-a's per-coordinate factor ``lam0 / sqrt(MeanSquare + eps)``."""
    return lam0 / torch.sqrt(mean_square + eps)


def update_mean_square(mean_square: Tensor | None, grad: Tensor, decay: float) -> Tensor:
    """``MS <- decay * MS + (1 - decay) * g (.) g``; the first call starts from zero."""
    square = grad * grad
    if mean_square is None:
        return (1.0 - decay) * square
    return decay * mean_square + (1.0 - decay) * square
