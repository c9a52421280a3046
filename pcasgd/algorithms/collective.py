"""Collective modes: ssgd (allreduce of gradients) and odsgd (one-step-delay SGD).

The engine does the allreduce (in the simulator: a mean over agents; under MPI: Horovod or
MPI allreduce) and decides when a reduction completes; these classes hold the arithmetic.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.prediction import update_mean_square
from pcasgd.errors import ConfigError


class GlobalSGD:
    """Replicated weights moved by the mean gradient: ssgd, and odsgd's global optimizer.

    Updated in place: these vectors are as large as the model and change every step, so a new
    tensor per step would cost more than the arithmetic (fresh pages). Callers copy what they keep.
    """

    def __init__(self, config: AlgorithmConfig, params: Tensor) -> None:
        if config.family != "collective":
            raise ConfigError(f"mode {config.mode!r} is not a collective mode")
        self.config = config
        self.params = params.detach().clone()
        self.velocity = torch.zeros_like(self.params)

    def apply(self, mean_grad: Tensor, epoch: float = 0.0) -> None:
        lr = self.config.lr_at(epoch)
        self.velocity.mul_(self.config.effective_momentum).add_(mean_grad, alpha=-lr)  # v <- mu v - lr g
        self.params.add_(self.velocity)


class GlobalStep(Protocol):
    """What moves odsgd's global weights ``params`` by a mean gradient: :class:`GlobalSGD`, or the
    torch optimizer that :class:`pcasgd.CollectiveOptimizer` wraps."""

    params: Tensor

    def apply(self, mean_grad: Tensor, epoch: float = 0.0) -> None: ...


class OneStepDelayAgent:
    """One odsgd agent: global weights ``W`` (identical everywhere) and local weights ``W~``.

    Per iteration the engine computes ``g`` at :attr:`local_params`, starts an allreduce, calls
    :meth:`complete` for every reduction that has finished by now, then :meth:`local_step`.
    ``global_opt``: what steps ``W`` (default: SGD with the config's momentum).
    """

    def __init__(self, config: AlgorithmConfig, params: Tensor, global_opt: GlobalStep | None = None) -> None:
        self.config = config
        self.global_opt = global_opt if global_opt is not None else GlobalSGD(config, params)
        self.local_params = params.detach().clone()
        # The W that local_params were derived from (the dc local optimizer's reference).
        self._base = self.global_opt.params.clone() if config.odsgd_local_opt == "dc" else None
        self._mean_square: Tensor | None = None

    @property
    def global_params(self) -> Tensor:
        return self.global_opt.params

    def complete(self, mean_grad: Tensor, epoch: float = 0.0) -> None:
        """A reduction finished: ``W <- GlobalOpt(W, mean g)``."""
        self.global_opt.apply(mean_grad, epoch)

    def sync_local(self) -> None:
        """Warm-up (plain SSGD): local weights follow the global ones."""
        self.local_params.copy_(self.global_opt.params)
        if self._base is not None:
            self._base.copy_(self.global_opt.params)

    def local_step(self, grad: Tensor, epoch: float = 0.0, lr: float | None = None) -> None:
        """``W~ <- W - alpha_l * g_hat`` from the last completed ``W``; ``lr``: the global rate a
        torch scheduler set for this step (default: the config's schedule at ``epoch``)."""
        config = self.config
        direction = grad
        if config.odsgd_local_opt == "dc":
            self._mean_square = update_mean_square(self._mean_square, grad, config.effective_ms_decay)
            scale = config.effective_lambda / torch.sqrt(self._mean_square + config.eps)
            direction = grad + scale * grad * grad * (self.global_opt.params - self._base)
            self._base.copy_(self.global_opt.params)
        local_lr = config.local_lr_at(epoch) if lr is None else config.local_lr_for(lr)
        torch.add(self.global_opt.params, direction, alpha=-local_lr, out=self.local_params)
