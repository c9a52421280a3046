"""Datasets as tensors, their partition across agents, and the batches agents train on.

Images stay in their stored form (uint8 for image datasets) and become normalized floats one
batch at a time; CIFAR-10's augmentation (random crop with 4 pixels of zero padding, horizontal
flip) runs on the whole batch at once. Under MPI a rank materializes only its own shard of the
training set (the cached arrays are memory-mapped, so it reads just those rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pcasgd.app import sources
from pcasgd.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# Per-channel mean and std of the training images (on the [0, 1] scale), for normalization.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
AUGMENTED = ("cifar10",)


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors as stored, with what turns a batch of them into model inputs.

    ``train_x`` may hold only some rows of the training set (an MPI rank's shard): ``train_rows``
    are their indices in the full set, ``train_labels`` the full set's labels (for partitioning).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int
    train_rows: np.ndarray
    train_labels: np.ndarray
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test_x.shape[1:])

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    def to(self, device: torch.device) -> Dataset:
        moved = {name: getattr(self, name).to(device) for name in ("train_x", "train_y", "test_x", "test_y")}
        return Dataset(**{**self.__dict__, **moved})

    def inputs(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Model inputs from stored images: floats in [0, 1], augmented (training, with ``generator``), normalized."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.augment and generator is not None:
            x = augment_batch(x, generator)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def test_subset(self, samples: int) -> Dataset:
        """The same dataset with ``samples`` test samples drawn once with a fixed seed (test sets
        stored class by class would make the first ones all one class)."""
        if samples >= len(self.test_y):
            return self
        chosen = torch.randperm(len(self.test_y), generator=torch.Generator().manual_seed(0))[:samples]
        chosen = chosen.sort().values.to(self.test_y.device)
        return Dataset(**{**self.__dict__, "test_x": self.test_x[chosen], "test_y": self.test_y[chosen]})

    def train_batch(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        """Stored images and labels of training rows ``rows`` (indices into the full training set)."""
        local = np.searchsorted(self.train_rows, rows)
        index = torch.from_numpy(local).to(self.train_y.device)
        return self.train_x[index], self.train_y[index]


def augment_batch(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip, per image, for a whole batch."""
    n, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(height, device=x.device).view(1, height)).view(n, 1, height, 1)
    cols = (dx.view(n, 1) + torch.arange(width, device=x.device).view(1, width)).view(n, 1, 1, width)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    cropped = padded[batch, channels, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)


def _digits() -> sources.Arrays:
    """scikit-learn's bundled 8x8 digits (1,797 images): a fixed stratified 80/20 split, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _arrays(name: str, data_dir: Path | None, download: bool) -> sources.Arrays:
    if name == "digits":
        return _digits()
    if name in ("mnist", "fashion-mnist"):
        return sources.load_idx_dataset(name, data_dir, download)
    if name == "cifar10":
        return sources.load_cifar10(data_dir, download)
    raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load(
    name: str, data_dir: Path | None = None, download: bool = False, train_rows: np.ndarray | None = None
) -> Dataset:
    """Dataset ``name``; ``train_rows``: materialize only those training rows (default: all)."""
    arrays = _arrays(name, data_dir, download)
    labels = np.asarray(arrays["train_y"], dtype=np.int64)
    rows = np.arange(len(labels)) if train_rows is None else np.sort(np.asarray(train_rows, dtype=np.int64))
    mean, std = NORMALIZATION.get(name, (None, None))
    return Dataset(
        name,
        torch.from_numpy(np.ascontiguousarray(arrays["train_x"][rows])),
        torch.from_numpy(labels[rows]),
        torch.from_numpy(np.array(arrays["test_x"])),  # a copy: the cache is memory-mapped read-only
        torch.from_numpy(np.array(arrays["test_y"], dtype=np.int64)),
        classes=int(max(labels.max(), np.max(arrays["test_y"])) + 1),
        train_rows=rows,
        train_labels=labels,
        mean=mean,
        std=std,
        augment=name in AUGMENTED,
    )


def training_labels(name: str, data_dir: Path | None = None, download: bool = False) -> np.ndarray:
    """The full training set's labels (what partitioning needs), without materializing images."""
    return np.asarray(_arrays(name, data_dir, download)["train_y"], dtype=np.int64)


# -- partitioning ------------------------------------------------------------------------------

PARTITIONS = ("iid", "dirichlet:ALPHA")


def parse_partition(spec: str) -> float | None:
    """``iid`` -> None; ``dirichlet:ALPHA`` -> ALPHA (> 0)."""
    if spec == "iid":
        return None
    kind, _, value = spec.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(value)
        except ValueError:
            alpha = -1.0
        if 0 < alpha < math.inf:
            return alpha
    raise ConfigError(
        f"unknown partition {spec!r}; use iid or dirichlet:ALPHA with a finite ALPHA > 0, e.g. dirichlet:0.5"
    )


def training_subset(size: int, samples: int) -> np.ndarray:
    """Sorted rows of a ``samples``-image subset of a ``size``-image training set (0: all rows).

    Drawn once with a fixed seed, not the run's: every seed and mode of a comparison trains on
    the same images, and only the partition and the training vary with the seed.
    """
    if samples > size:
        raise ConfigError(f"--train-samples {samples} but the training set has only {size} samples")
    if samples in (0, size):
        return np.arange(size)
    return np.sort(np.random.default_rng(0).permutation(size)[:samples])


def partition(labels: np.ndarray, agents: int, spec: str, seed: int, samples: int = 0) -> list[np.ndarray]:
    """Training-row indices per agent, sorted; deterministic per ``seed``. ``samples``: partition
    only a fixed subset of that many rows (:func:`training_subset`; 0: every row)."""
    alpha = parse_partition(spec)
    rows = training_subset(len(labels), samples)
    if agents > len(rows):
        raise ConfigError(f"{agents} agents but only {len(rows)} training samples")
    if alpha is None:
        shards = partition_iid(len(rows), agents, seed)
    else:
        shards = partition_dirichlet(labels[rows], agents, alpha, seed)
    return [rows[shard] for shard in shards]


def partition_iid(samples: int, agents: int, seed: int) -> list[np.ndarray]:
    """Shuffle sample indices with ``seed`` and cut them into ``agents`` near-equal shards."""
    if agents > samples:
        raise ConfigError(f"{agents} agents but only {samples} training samples")
    order = np.random.default_rng(seed).permutation(samples)
    return [np.sort(shard) for shard in np.array_split(order, agents)]


def partition_dirichlet(labels: np.ndarray, agents: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Non-IID shards: each class is split across agents in proportions drawn from Dir(alpha).

    Smaller ``alpha`` gives each agent fewer classes. Every agent gets at least one sample: an
    empty shard takes one from the largest.
    """
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(agents)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * agents))[:-1] * len(members)).astype(int)
        for agent, piece in enumerate(np.split(members, cuts)):
            shards[agent].extend(piece.tolist())
    for agent in range(agents):
        if not shards[agent]:
            largest = max(range(agents), key=lambda a: len(shards[a]))
            shards[agent].append(shards[largest].pop())
    return [np.sort(np.asarray(shard, dtype=np.int64)) for shard in shards]


def label_histogram(labels: np.ndarray, shards: Sequence[np.ndarray], classes: int) -> list[list[int]]:
    """Per agent, how many samples of each class it holds (for the summary)."""
    return [np.bincount(labels[shard], minlength=classes).tolist() for shard in shards]
