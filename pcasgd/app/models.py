"""Models by name, and moving a model's parameters to and from one flat vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pcasgd.errors import ConfigError

MODELS = ("mlp",)


def build_model(name: str, input_shape: tuple[int, ...], classes: int, hidden: int = 64) -> nn.Module:
    if name == "mlp":
        features = math.prod(input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(MODELS)}")


def flatten_parameters(model: nn.Module) -> Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def load_flat_parameters(model: nn.Module, flat: Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, model.parameters())


def flat_gradient(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def segment_offsets(model: nn.Module) -> list[int]:
    """Offsets of each parameter tensor in the flat vector, ``[0, n1, n1 + n2, ..., total]``."""
    offsets = [0]
    for parameter in model.parameters():
        offsets.append(offsets[-1] + parameter.numel())
    return offsets
