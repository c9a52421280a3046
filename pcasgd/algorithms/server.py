"""Parameter-server modes: ps-asgd, dcasgd-c, dcasgd-a, sasgd (the server's update rules).

The engine tells the server which weights (and version) each worker pulled and hands it each
gradient a worker pushes; the server measures staleness as ``version now - version pulled`` and
applies the mode's rule. The server's step uses momentum ``config.momentum`` (0 gives the
papers' plain form); with one worker and no delay every mode is plain SGD with momentum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.prediction import adaptive_lambda, update_mean_square
from pcasgd.algorithms.sgd import momentum_velocity
from pcasgd.errors import ConfigError


@dataclass(frozen=True)
class PushReport:
    """One pushed gradient: its staleness at arrival, and whether an update was applied."""

    staleness: int
    applied: bool


class ParameterServer:
    """Weights, version counter and per-worker state (``w_bak``, MeanSquare) of the server."""

    def __init__(self, config: AlgorithmConfig, params: Tensor, workers: int) -> None:
        if config.family != "server":
            raise ConfigError(f"mode {config.mode!r} is not a parameter-server mode")
        if workers < 1:
            raise ConfigError(f"a parameter server needs at least one worker, got {workers}")
        if config.mode == "sasgd" and config.sasgd_n > workers:
            raise ConfigError(f"sasgd n-softsync needs n <= workers ({workers}), got n={config.sasgd_n}")
        self.config = config
        self.workers = workers
        self.params = params.detach().clone()
        self.velocity = torch.zeros_like(self.params)
        self.version = 0
        self._backup: dict[int, tuple[Tensor, int]] = {}
        self._mean_square: dict[int, Tensor] = {}
        self._pending: list[tuple[Tensor, int]] = []

    @property
    def gradients_per_update(self) -> int:
        """sasgd applies an update after every ``c = floor(workers / n)`` gradients (at least one,
        once dead workers left fewer than ``n``); others after each."""
        return max(1, self.workers // self.config.sasgd_n) if self.config.mode == "sasgd" else 1

    def record_pull(self, worker: int, params: Tensor, version: int) -> None:
        """Remember what ``worker`` pulled (``w_bak``): the gradient it pushes next is taken there."""
        self._backup[worker] = (params, version)

    def push(self, worker: int, grad: Tensor, epoch: float = 0.0) -> PushReport:
        if worker not in self._backup:
            raise ConfigError(f"worker {worker} pushed a gradient without pulling weights first")
        pulled, pulled_version = self._backup[worker]
        staleness = self.version - pulled_version
        if self.config.mode == "sasgd":
            self._pending.append((grad, staleness))
            if len(self._pending) < self.gradients_per_update:
                return PushReport(staleness, applied=False)
            self._apply_pending(epoch)
        else:
            self._apply(grad + self._compensation(worker, grad, pulled), epoch)
        return PushReport(staleness, applied=True)

    def remove_worker(self, worker: int, epoch: float) -> bool:
        """``worker`` died (``--fault-tolerant``): forget it, and count sasgd's ``c`` over the
        workers left. Returns whether the gradients already buffered make an update now (applied
        here: hardsync would otherwise wait for a gradient that never comes)."""
        self.workers -= 1
        self._backup.pop(worker, None)
        self._mean_square.pop(worker, None)
        if self.config.mode == "sasgd" and self._pending and len(self._pending) >= self.gradients_per_update:
            self._apply_pending(epoch)
            return True
        return False

    def _apply_pending(self, epoch: float) -> None:
        self._apply(self._softsync_direction(), epoch)
        self._pending = []

    def _apply(self, direction: Tensor, epoch: float) -> None:
        lr = self.config.lr_at(epoch)
        self.velocity = momentum_velocity(self.velocity, direction, lr, self.config.effective_momentum)
        self.params = self.params + self.velocity
        self.version += 1

    def _compensation(self, worker: int, grad: Tensor, pulled: Tensor) -> Tensor | float:
        """DC-ASGD: ``lambda_t * g (.) g (.) (w - w_bak(worker))``; zero for ps-asgd."""
        mode = self.config.mode
        if mode == "ps-asgd":
            return 0.0
        lam: float | Tensor = self.config.effective_lambda
        if mode == "dcasgd-a":
            self._mean_square[worker] = update_mean_square(
                self._mean_square.get(worker), grad, self.config.effective_ms_decay
            )
            lam = adaptive_lambda(self.config.effective_lambda, self._mean_square[worker], self.config.eps)
        return lam * grad * grad * (self.params - pulled)

    def _softsync_direction(self) -> Tensor:
        """``(1/c) sum_l (alpha(tau_l) / alpha0) g_l`` for the buffered gradients."""
        rule = self.config.sasgd_lr
        staleness = [tau for _, tau in self._pending]
        mean_staleness = sum(staleness) / len(staleness)
        total = torch.zeros_like(self.params)
        for grad, tau in self._pending:
            if rule == "inverse":
                scale = 1.0 / max(tau, 1)
            elif rule == "average":
                scale = 1.0 / max(mean_staleness, 1.0)
            else:
                scale = 1.0
            total = total + scale * grad
        return total / len(self._pending)
