"""The training application's gradient oracle (each agent's mini-batches from its own shard),
and the evaluation of a model on the test set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pcasgd.app.data import Dataset
from pcasgd.flat import flat_gradient, load_flat_parameters

EVAL_BATCH = 1000


class BatchOracle:
    """Gradients of each agent's next mini-batch from its own shard, in a seeded order.

    Each agent walks a fresh permutation of its shard per pass; a pass's last batch may be
    smaller. Augmentation (CIFAR-10) draws from the agent's own generator, so a run is
    reproducible per seed on any backend. One model object is reused: the agent's flat
    parameters are loaded into it. ``weight_decay`` adds ``weight_decay * x`` to the gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        shards: list[np.ndarray],
        batch_size: int,
        seed: int,
        weight_decay: float = 0.0,
    ) -> None:
        self.model = model
        self.data = data
        self.shards = shards
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self._rngs = [np.random.default_rng([seed, agent]) for agent in range(len(shards))]
        self._generators = [torch.Generator().manual_seed(seed * 100_003 + agent) for agent in range(len(shards))]
        self._orders: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in shards]
        self._positions = [0] * len(shards)
        self.samples = 0
        self.loss_fn = nn.CrossEntropyLoss()

    def state_dict(self) -> dict[str, Any]:
        """Where each agent is in its data and its random streams (for checkpoints)."""
        return {
            "rngs": [rng.bit_generator.state for rng in self._rngs],
            "generators": [generator.get_state() for generator in self._generators],
            "orders": self._orders,
            "positions": self._positions,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rng, saved in zip(self._rngs, state["rngs"], strict=True):
            rng.bit_generator.state = saved
        for generator, saved in zip(self._generators, state["generators"], strict=True):
            generator.set_state(saved)
        self._orders, self._positions, self.samples = state["orders"], state["positions"], state["samples"]

    def _next_rows(self, agent: int) -> np.ndarray:
        if self._positions[agent] >= len(self._orders[agent]):
            self._orders[agent] = self.shards[agent][self._rngs[agent].permutation(len(self.shards[agent]))]
            self._positions[agent] = 0
        start = self._positions[agent]
        self._positions[agent] = start + self.batch_size
        return self._orders[agent][start : start + self.batch_size]

    def __call__(self, agent: int, params: Tensor) -> tuple[Tensor, float]:
        x, y = self.data.train_batch(self._next_rows(agent))
        inputs = self.data.inputs(x, self._generators[agent])
        load_flat_parameters(self.model, params)
        self.model.train()
        self.model.zero_grad(set_to_none=True)  # fresh gradients: accumulating into old ones was ~10 % slower
        loss = self.loss_fn(self.model(inputs), y)
        loss.backward()
        self.samples += len(y)
        grad = flat_gradient(self.model).detach()  # torch.cat: a new tensor already
        if self.weight_decay:
            grad = grad + self.weight_decay * params
        return grad, loss.item()


@torch.no_grad()
def evaluate(model: nn.Module, params: Tensor, data: Dataset) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``params`` on the test set, in batches."""
    load_flat_parameters(model, params)
    model.eval()
    correct, loss = 0.0, 0.0
    for start in range(0, len(data.test_y), EVAL_BATCH):
        x, y = data.test_x[start : start + EVAL_BATCH], data.test_y[start : start + EVAL_BATCH]
        logits = model(data.inputs(x))
        correct += float((logits.argmax(dim=1) == y).sum())
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data.test_y), loss / len(data.test_y)


def consensus_distance(agent_params: list[Tensor]) -> tuple[float, float]:
    """Mean and max over agents of ``||x_i - x_bar||``."""
    stacked = torch.stack(agent_params)
    distances = torch.linalg.vector_norm(stacked - stacked.mean(dim=0), dim=1)
    return float(distances.mean()), float(distances.max())
