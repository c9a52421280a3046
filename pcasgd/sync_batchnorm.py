"""``pcasgd.SyncBatchNorm`` (Horovod's ``hvd.SyncBatchNorm``): batch normalization whose training
statistics are those of every rank's batch together.

For the collective modes (``ssgd``, ``odsgd``), where every rank holds the same model: the forward
pass sums each channel's count, sum and sum of squares over the ranks (one allreduce), so every
rank normalizes with the statistics of the global batch and keeps the same running statistics;
the backward pass sums the gradient's two channel sums over the ranks (a second allreduce), as
the global batch's gradient needs. The weight and bias get this rank's part of their gradient;
the optimizer wrapper then averages it as it does every gradient. Outside training it is a plain
batch normalization with its running statistics.

Decentralized agents hold different models, whose batch statistics do not combine: the
decentralized optimizer refuses a model with this layer (``mix_buffers=True`` with a plain
BatchNorm mixes the agents' running statistics instead).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from pcasgd import collectives


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for ``nn.BatchNorm1d/2d/3d`` (inputs of shape ``(N, C, ...)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _LAYERS.add(self)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects an input of shape (N, C, ...), got {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training or collectives.size() == 1:
            return super().forward(input)
        if self.momentum is None:  # a cumulative average: as BatchNorm, by the batches seen
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            momentum = self.momentum
        return _SyncNormalization.apply(
            input, self.weight, self.bias, self.running_mean, self.running_var, self.eps, momentum
        )


#: every SyncBatchNorm alive, so that a wrapper given only the tensors (Horovod's
#: ``named_parameters=``, no model) can still tell that they belong to one
_LAYERS: weakref.WeakSet[SyncBatchNorm] = weakref.WeakSet()


def in_use(model: nn.Module | None, tensors: list[Tensor]) -> bool:
    """Whether ``model`` holds a SyncBatchNorm, or the weight or bias of one is among ``tensors``."""
    if model is not None and any(isinstance(module, SyncBatchNorm) for module in model.modules()):
        return True
    ids = {id(tensor) for tensor in tensors}
    return any(id(p) in ids for layer in list(_LAYERS) for p in (layer.weight, layer.bias) if p is not None)


def _channel_sums(*tensors: Tensor) -> Tensor:
    """Each tensor's per-channel sum (dimension 1), stacked."""
    dims = [0, *range(2, tensors[0].dim())]
    return torch.stack([t.sum(dim=dims) for t in tensors])


def _per_channel(vector: Tensor, like: Tensor) -> Tensor:
    return vector.view(1, -1, *([1] * (like.dim() - 2)))


class _SyncNormalization(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
    ) -> Tensor:
        count = x.numel() // x.shape[1]
        sums = _channel_sums(x, x * x)
        total = collectives.allreduce(torch.cat([sums.reshape(-1), x.new_tensor([count])]), op="sum")
        n = float(total[-1])
        mean, squares = total[:-1].view(2, -1)
        var = (squares / n - (mean / n) ** 2).clamp_(min=0.0)
        mean = mean / n
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_(var * n / max(n - 1.0, 1.0), alpha=momentum)
        x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.n, ctx.has_bias = n, bias is not None
        out = x_hat if weight is None else x_hat * _per_channel(weight, x)
        return out if bias is None else out + _per_channel(bias, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_hat, invstd, weight = ctx.saved_tensors
        local = _channel_sums(grad, grad * x_hat)  # this rank's sum of dy and of dy * x_hat
        total = collectives.allreduce(local.reshape(-1), op="sum").view(2, -1)
        scale = invstd if weight is None else invstd * weight
        grad_x = (
            grad - _per_channel(total[0] / ctx.n, grad) - x_hat * _per_channel(total[1] / ctx.n, grad)
        ) * _per_channel(scale, grad)
        grad_weight = local[1] if weight is not None else None
        grad_bias = local[0] if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None, None, None, None
