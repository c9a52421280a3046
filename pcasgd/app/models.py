"""Models by name, and moving a model's parameters to and from one flat vector.

``mlp`` (one hidden layer), ``lenet5`` (LeCun et al. 1998, with ReLU and max pooling),
``resnet20`` (He et al. 2016, the CIFAR ResNet: 3 stages of 3 basic blocks, 16/32/64 channels;
where a stage widens, a 1x1 convolution + BatchNorm shortcut (their option B): 272,474
parameters for 10 classes, the model PLATFORM.md's speeds were measured on), ``resnet20a``
(the same with their option A, zero-padded identity shortcuts: 269,722 parameters), and any
torchvision classification model by name (``torchvision:NAME`` or plain ``NAME``; grayscale
inputs are repeated to 3 channels for them).

BatchNorm running statistics are buffers, not parameters: agents mix parameters only, and each
model object keeps its own statistics (in the simulator, one model object serves every agent).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pcasgd.errors import ConfigError

MODELS = ("mlp", "lenet5", "resnet20", "resnet20a", "torchvision:NAME")


def build_model(name: str, input_shape: tuple[int, ...], classes: int, hidden: int = 64) -> nn.Module:
    channels = input_shape[0] if len(input_shape) == 3 else 1
    if name == "mlp":
        features = math.prod(input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    if name == "lenet5":
        _require_image(name, input_shape, minimum=12)
        return LeNet5(channels, input_shape[1], input_shape[2], classes)
    if name in ("resnet20", "resnet20a"):
        _require_image(name, input_shape, minimum=8)
        return ResNet20(channels, classes, projection=name == "resnet20")
    return _torchvision_model(name.removeprefix("torchvision:"), channels, classes)


def _require_image(name: str, input_shape: tuple[int, ...], minimum: int) -> None:
    if len(input_shape) != 3 or min(input_shape[1:]) < minimum:
        raise ConfigError(
            f"model {name} needs images of at least {minimum}x{minimum} pixels; the data is {input_shape}"
        )


def _torchvision_model(name: str, channels: int, classes: int) -> nn.Module:
    try:
        import torchvision
    except ImportError as error:
        raise ConfigError(f"model {name!r} would come from torchvision, which is missing ({error})") from None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ConfigError(
            f"unknown model {name!r}; available: mlp, lenet5, resnet20, resnet20a, or a torchvision classification "
            "model "
            f"(e.g. {', '.join(sorted(available)[:6])}, ...)"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=classes)
    return model if channels == 3 else nn.Sequential(_RepeatChannels(3), model)


class _RepeatChannels(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, self.channels, -1, -1)


class LeNet5(nn.Module):
    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((height // 2 - 4) // 2, (width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side[0] * side[1], 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.stride = stride
        self.extra_channels = outputs - inputs
        widens = stride > 1 or inputs != outputs
        self.projection = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))
            if projection and widens
            else None
        )

    def shortcut(self, x: Tensor) -> Tensor:
        """Option B: the projection; option A: subsample and pad the new channels with zeros."""
        if self.projection is not None:
            return self.projection(x)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = nn.functional.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, channels: int, classes: int, projection: bool = True, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers: list[nn.Module] = []
        width = 16
        for stage, outputs in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(width, outputs, stride, projection))
                width = outputs
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(64, classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return self.head(out.mean(dim=(2, 3)))
