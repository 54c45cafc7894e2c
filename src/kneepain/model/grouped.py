"""The G location models of ``paper`` mode as one network that trains all of them in one pass.

Location g's model is branch g (one ``features`` Sequential), global average pooling, the pair
combination and head g. :class:`GroupedLocations` holds the G branches as one Sequential of
grouped layers: each convolution has ``groups=G`` (channel block g sees only slice g and holds
branch g's weights), each BatchNorm runs over the G * C channels (per channel, hence per location,
exactly as the separate BNs do; kept, not folded, so it trains), ReLU and pooling act per channel,
and the G heads are one (G, 2, D) weight. A (B, 2, G, H, W) batch gives logits (B, G, 2): every
location's logits from its own parameters only, so with a loss that is the SUM of the locations'
losses each location gets exactly its own gradients.

Location g's parameters are block g of the grouped tensors (dimension 0): :func:`split_state` and
:func:`join_states` convert exactly between the grouped state and the per-location states (keys
``branch.*`` and ``head.*``, those of one branch and one head), and :meth:`GroupedLocations.from_siamese`
and :meth:`GroupedLocations.write_into` between this module and a SiameseNet's ``branches`` and
``location_heads``, so bundles and everything downstream keep the ordinary SiameseNet. All three
branches (KneeNet, VGG16-GAP, AlexNet-GAP) are one Sequential of Conv2d, BatchNorm2d, ReLU and
MaxPool2d layers and group this way; :func:`groupable` says whether a model does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from kneepain.model.siamese import SiameseNet, combine_pair

PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)  # act on every channel alike
BATCH_COUNT = "num_batches_tracked"  # a BatchNorm's one scalar buffer: the same for all locations


def _grouped_layer(layers: list[nn.Module], device: torch.device | str | None = None) -> nn.Module:
    """One layer position of G branches as one fresh grouped layer (on ``device``), sized for their
    weights concatenated."""
    first, groups = layers[0], len(layers)
    if isinstance(first, nn.Conv2d):
        if first.groups != 1 or first.padding_mode != "zeros":
            raise ValueError("only plain convolutions (groups=1, zero padding) can be grouped")
        return nn.Conv2d(
            first.in_channels * groups,
            first.out_channels * groups,
            first.kernel_size,
            first.stride,
            first.padding,
            first.dilation,
            groups=groups,
            bias=first.bias is not None,
            device=device,
        )
    if isinstance(first, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            first.num_features * groups,
            eps=first.eps,
            momentum=first.momentum,
            affine=first.affine,
            track_running_stats=first.track_running_stats,
            device=device,
        )
    if isinstance(first, PER_CHANNEL):
        return copy.deepcopy(first)
    raise ValueError(f"cannot group branches with a {type(first).__name__} layer")


def grouped_layers(
    branches: Sequence[nn.Module], device: torch.device | str | None = None
) -> list[nn.Module]:
    """Fresh grouped layers (on ``device``) for ``branches``; ValueError when they cannot be grouped."""
    plans = [list(getattr(branch, "features", [])) for branch in branches]
    if not plans[0] or any(len(plan) != len(plans[0]) for plan in plans):
        raise ValueError("branches without one `features` Sequential of the same plan cannot be grouped")
    return [_grouped_layer(list(layers), device) for layers in zip(*plans, strict=True)]


def grouped_features(branches: Sequence[nn.Module]) -> nn.Sequential:
    """``branches`` as one grouped Sequential holding their values: (N, G, H, W) -> (N, G * C, h, w).

    Made on the meta device and given the joined tensors (nothing is initialised or copied twice);
    ValueError when the branches cannot be grouped.
    """
    grouped = nn.Sequential(*grouped_layers(branches, device="meta"))
    states = [{f"branch.{k}": v for k, v in branch.features.state_dict().items()} for branch in branches]
    grouped.load_state_dict(join_states(states), assign=True)
    return grouped


def split_state(state: dict[str, torch.Tensor], location: int, n_locations: int) -> dict[str, torch.Tensor]:
    """Location ``location``'s own state (``branch.*``, ``head.*`` keys) of a grouped state (views)."""
    own: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("head_"):
            own["head." + key.removeprefix("head_")] = value[location]
        elif key.endswith(BATCH_COUNT):
            own["branch." + key] = value
        else:
            block = value.shape[0] // n_locations
            own["branch." + key] = value[location * block : (location + 1) * block]
    return own


def join_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The grouped state of per-location states (the inverse of :func:`split_state`).

    A BatchNorm's batch count is one scalar in the grouped network: the first location's is kept.
    """
    joined: dict[str, torch.Tensor] = {}
    for name, value in states[0].items():
        is_head = name.startswith("head.")
        key = "head_" + name.removeprefix("head.") if is_head else name.removeprefix("branch.")
        if name.endswith(BATCH_COUNT):
            joined[key] = value.clone()
        elif is_head:
            joined[key] = torch.stack([state[name] for state in states])
        else:
            joined[key] = torch.cat([state[name] for state in states])
    return joined


def location_states(model: SiameseNet) -> list[dict[str, torch.Tensor]]:
    """Each location's branch and head state of a ``paper``-mode SiameseNet (``branch.*``, ``head.*``)."""
    return [
        {
            **{f"branch.{k}": v for k, v in branch.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()},
        }
        for branch, head in zip(model.branches, model.location_heads, strict=True)
    ]


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def groupable(model: SiameseNet) -> bool:
    """Whether ``model`` is a ``paper``-mode network whose branches :class:`GroupedLocations` can group."""
    if model.config.mode != "paper" or len(model.branches) < 2:
        return False
    try:
        GroupedLocations.plan(model)
    except ValueError:
        return False
    return True


class GroupedLocations(nn.Module):
    """G location models (branch, pooling, combination, head) as one network; see the module docstring.

    Input (B, 2 knees, G, H, W); output logits (B, G, 2), location g's from its own parameters.
    """

    def __init__(self, layers: list[nn.Module], feature_dim: int, n_locations: int, combine: str) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.head_weight = nn.Parameter(torch.zeros(n_locations, 2, feature_dim))
        self.head_bias = nn.Parameter(torch.zeros(n_locations, 2))
        self.n_locations = n_locations
        self.combine = combine

    @staticmethod
    def plan(model: SiameseNet) -> list[nn.Module]:
        """Fresh grouped layers for ``model``'s branches; ValueError when they cannot be grouped."""
        return grouped_layers(model.branches)

    @classmethod
    def from_siamese(cls, model: SiameseNet) -> GroupedLocations:
        """A grouped copy of ``model``'s branches and location heads (same values, same device)."""
        grouped = cls(cls.plan(model), model.feature_dim, model.config.n_locations, model.config.combine)
        grouped.load_state_dict(join_states(location_states(model)))
        return grouped.to(model.location_heads[0].weight.device)

    def write_into(self, model: SiameseNet, states: list[dict[str, torch.Tensor]] | None = None) -> None:
        """Copy the locations' states (by default this module's) into ``model``'s branches and heads."""
        if states is None:
            state = self.state_dict()
            states = [split_state(state, g, self.n_locations) for g in range(self.n_locations)]
        for own, branch, head in zip(states, model.branches, model.location_heads, strict=True):
            branch.load_state_dict(
                {k.removeprefix("branch."): v for k, v in own.items() if k.startswith("branch.")}
            )
            head.load_state_dict(
                {k.removeprefix("head."): v for k, v in own.items() if k.startswith("head.")}
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, G, 2) of every location's model for a (B, 2, G, H, W) batch."""
        b, k, g, h, w = x.shape
        if g != self.n_locations:
            raise ValueError(f"expected {self.n_locations} locations, got input {tuple(x.shape)}")
        maps = self.features(x.reshape(b * k, g, h, w))
        pooled = maps.mean(dim=(-2, -1)).reshape(b, k, g, -1)
        z = combine_pair(pooled, self.combine)  # (B, G, D)
        return (z[:, :, None, :] * self.head_weight).sum(dim=-1) + self.head_bias  # G heads, D small
