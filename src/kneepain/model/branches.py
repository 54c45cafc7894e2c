"""The convolutional branches a Siamese model can use: the paper's KneeNet, VGG16-GAP, AlexNet-GAP.

All take one grey slice (N, 1, H, W) in [0, 1] and return the final feature maps (N, C, h, w); the
Siamese model pools and combines them. Written in plain torch (torchvision would pull another torch
build here). ``width`` scales every channel count so a small version trains on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

BRANCHES = ("kneenet", "vgg16_gap", "alexnet_gap")


def _channels(base: int, width: float) -> int:
    """A channel count scaled by ``width`` (at least 1)."""
    return max(1, round(base * width))


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class KneeNet(nn.Module):
    """The paper's branch (Figure 2B): six conv-BN-ReLU layers, max pooling after layers 1 and 3.

    conv 7x7/2 (64) - maxpool 3x3/2 - conv 3x3 (128) - conv 3x3 (256) - maxpool 2x2/2 -
    conv 3x3 (256) - conv 3x3 (512) - conv 3x3 (512): 512 x 28 x 28 maps for a 224 x 224 slice.

    Example:
        >>> KneeNet()(torch.zeros(1, 1, 224, 224)).shape
        torch.Size([1, 512, 28, 28])
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = [_channels(b, width) for b in (64, 128, 256, 256, 512, 512)]
        self.features = nn.Sequential(
            *_conv_bn_relu(1, c[0], 7, 2, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
            *_conv_bn_relu(c[0], c[1], 3, 1, 1),
            *_conv_bn_relu(c[1], c[2], 3, 1, 1),
            nn.MaxPool2d(2, stride=2),
            *_conv_bn_relu(c[2], c[3], 3, 1, 1),
            *_conv_bn_relu(c[3], c[4], 3, 1, 1),
            *_conv_bn_relu(c[4], c[5], 3, 1, 1),
        )
        self.out_channels = c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class VGG16GAP(nn.Module):
    """VGG16's 13 convolutions without the last max pooling (14 x 14 maps for 224), for global pooling.

    ``features`` has torchvision's layer indices (0, 2, 5, ...), so a converted torchvision
    ``features.*`` state dict loads directly (see :func:`load_pretrained`).
    """

    PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for item in self.PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                c_out = _channels(int(item), width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.out_channels = c_in
        # torchvision's VGG initialisation: 13 convolutions without batch norm do not train from
        # PyTorch's default init (the loss stayed at ln 2: every ReLU output died).
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class AlexNetGAP(nn.Module):
    """AlexNet's five convolutions without the last max pooling (13 x 13 maps for 224).

    Layer indices follow torchvision's ``alexnet().features`` (0, 3, 6, 8, 10) for the same reason
    as :class:`VGG16GAP`.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = [_channels(b, width) for b in (64, 192, 384, 256, 256)]
        self.features = nn.Sequential(
            nn.Conv2d(1, c[0], 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c[0], c[1], 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c[1], c[2], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.out_channels = c[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_branch(name: str, width: float = 1.0) -> nn.Module:
    """The branch called ``name`` (one of :data:`BRANCHES`) at channel scale ``width``."""
    if name == "kneenet":
        return KneeNet(width)
    if name == "vgg16_gap":
        return VGG16GAP(width)
    if name == "alexnet_gap":
        return AlexNetGAP(width)
    raise ValueError(f"unknown branch {name!r}; expected one of {BRANCHES}")


def load_pretrained(branch: nn.Module, path: str | Path) -> list[str]:
    """Load local pretrained weights (a safetensors file) into ``branch``; returns the keys loaded.

    Keys may carry torchvision's names (``features.0.weight``); a classifier part is ignored. An
    RGB first convolution (3 input channels) is summed over colour, which is what a grey image
    replicated into three channels would see. Shapes must otherwise match (``width`` 1.0). Only
    safetensors is accepted: a pickled ``.pth`` can run code when loaded.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: pretrained weights must be a .safetensors file (no pickle)")
    loaded = load_file(str(path))
    own = branch.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if key not in own:
            continue
        if value.ndim == 4 and value.shape[1] == 3 and own[key].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != own[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, branch expects {tuple(own[key].shape)}"
            )
        chosen[key] = value
    if not chosen:
        raise ValueError(f"{path}: no key matches the branch (expected names like 'features.0.weight')")
    branch.load_state_dict(chosen, strict=False)
    return sorted(chosen)
