"""Datasets as in-memory tensors, and their partition across agents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pcasgd.errors import ConfigError

DATASETS = ("digits",)


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): a fixed stratified 80/20 split, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Dataset(
        "digits",
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        classes=10,
    )


def load(name: str) -> Dataset:
    if name == "digits":
        return load_digits()
    raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def partition_iid(samples: int, agents: int, seed: int) -> list[np.ndarray]:
    """Shuffle sample indices with ``seed`` and cut them into ``agents`` near-equal shards."""
    if agents > samples:
        raise ConfigError(f"{agents} agents but only {samples} training samples")
    order = np.random.default_rng(seed).permutation(samples)
    return [np.sort(shard) for shard in np.array_split(order, agents)]
