"""The Siamese network of the paper (Figure 2A): one branch per slice location, shared by both knees.

Input ``x``: float (B, 2 knees [left, right], S slices, H, W) in [0, 1]. For every location s the
left and the right slice go through the same branch; each map is globally average-pooled to a
vector g; the pair is combined (``combine``); the S locations' vectors are concatenated into one
linear classifier with 2 outputs (class 1 = right knee painful).

Combinations (``combine``):
- ``relu_diff`` (the published code): z = ReLU(g_left - g_right), per channel.
- ``diff``: z = g_left - g_right (signed).
- ``concat``: z = [g_left, g_right].

Class activation maps (``forward_with_cams``), computed from the same forward pass. Let
w = W[1] - W[0] be the classifier's weights on the logit difference d = logit_1 - logit_0 (the only
thing softmax sees), split per location into w_s, and f_k,s the final maps (C, h, w) of knee k.
Each knee's CAM is that knee's own contribution to the evidence that IT is the painful knee:
- ``diff``: d = b + sum_s [mean(w_s . f_L,s) - mean(w_s . f_R,s)]; the right knee enters with a minus
  sign, so CAM_R,s = -(w_s . f_R,s) (its contribution to d) and CAM_L,s = -(w_s . f_L,s) (its
  contribution to -d, the evidence for left).
- ``relu_diff``: ReLU(u) = 1[u > 0] * u exactly, so with the gate a_s = 1[g_L,s > g_R,s] taken from
  this forward pass the model is, for this input, exactly ``diff`` with weights a_s * w_s. The
  gated weights give the maps; a channel where the right knee's pooled value is at least the
  left's is closed for both knees and contributes to neither map.
- ``concat``: with w_s = [u_s, v_s], CAM_L,s = -(u_s . f_L,s) and CAM_R,s = +(v_s . f_R,s).
In every case, exactly (up to rounding):
    logit_1 - logit_0 = (b_1 - b_0) + sum_s mean_hw(CAM_R,s) - sum_s mean_hw(CAM_L,s),
with (b_1 - b_0) replaced by 0 under the ``swap_mean`` readout (:meth:`SiameseNet.cam_bias`).

Two readouts (``readout``), applied in eval mode only (training always uses the combination as is):
- ``direct``: the logits above.
- ``swap_mean``: the mean of the prediction for (left, right) and for the swapped pair (right,
  left), class-matched: logit_1 - logit_0 = (d(x) - d(swap x)) / 2. The branch maps are computed
  once (swapping the knees only swaps the pooled vectors), so only the head runs twice. The
  prediction becomes antisymmetric (identical knees give exactly 0.5) and the bias cancels; for
  ``relu_diff`` it equals ``diff`` with half the trained weights, since ReLU(u) - ReLU(-u) = u.
  The CAMs are the class-matched means of the two passes' CAMs, and the identity above holds
  with the bias term 0. A network trained with ``relu_diff`` and knee-swap augmentation ranks
  better read this way (docs/training.md).

Two heads (``head``):
- ``location`` (the paper's): the classifier has its own weights for every location's vector.
- ``shared``: one weight vector for all locations, and the logit sums the locations' scores
  (:class:`SharedLocationLinear`): a lesion counts the same on whichever slice it lies, and the
  head has 23 times fewer weights to learn from a few hundred subjects. Its ``weight`` is the
  equivalent per-location matrix, so the CAMs below hold unchanged.

Two ways to train (``mode``):
- ``joint``: one branch shared by all locations, trained end to end.
- ``paper``: one branch and one head per location (``location_heads``), each trained on its
  location alone; then the logistic ``classifier`` is fitted on their pooled features, as the
  published code did. The forward pass and CAMs are the same code in both modes.

Ensembles (``members`` > 1, :class:`SiameseEnsemble`): that many networks of one architecture,
initialised and trained from different seeds on the same subjects; the logits and the CAMs are
the members' means, so the identity above holds for the ensemble too (it is linear in both).
With a few hundred subjects one network's ranking swings with its seed; the mean does not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kneepain.contracts import IMAGE_SIZE, N_SLICES, JsonRecord
from kneepain.model.branches import BRANCHES, build_branch

COMBINATIONS = ("relu_diff", "diff", "concat")
MODES = ("joint", "paper")
READOUTS = ("direct", "swap_mean")
HEADS = ("location", "shared")


class SharedLocationLinear(nn.Module):
    """A linear classifier over S concatenated location vectors whose weights are shared by all locations.

    ``weight`` is the (2, S * D) matrix of the equivalent per-location classifier (the shared
    (2, D) weights repeated S times), so the CAM and inference code that reads
    ``classifier.weight`` treats both heads alike. The logit is the sum of the locations' scores
    with one weight vector: evidence counts the same on whichever slice it lies, which a
    23-fold smaller head learns from far fewer subjects.
    """

    def __init__(self, n_locations: int, feature_dim: int) -> None:
        super().__init__()
        self.n_locations = n_locations
        reference = nn.Linear(feature_dim, 2)
        self.shared_weight = nn.Parameter(reference.weight.detach().clone() / n_locations)
        self.bias = nn.Parameter(reference.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.shared_weight.repeat(1, self.n_locations)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        summed = z.reshape(z.shape[0], self.n_locations, -1).sum(dim=1)
        return functional.linear(summed, self.shared_weight, self.bias)


def combine_pair(pooled: torch.Tensor, how: str) -> torch.Tensor:
    """Combine pooled (B, 2, [S,] C) pairs along the knee axis 1 -> (B, [S,] D) (see ``combine``)."""
    left, right = pooled[:, 0], pooled[:, 1]
    if how == "relu_diff":
        return torch.relu(left - right)
    if how == "diff":
        return left - right
    return torch.cat([left, right], dim=-1)


@dataclass(frozen=True)
class ModelConfig(JsonRecord):
    """The architecture: everything needed to rebuild the network before loading its weights."""

    branch: str = "kneenet"
    width: float = 1.0
    input_size: int = IMAGE_SIZE
    combine: str = "relu_diff"
    mode: str = "paper"
    n_locations: int = N_SLICES
    head: str = "location"  # location (paper: one weight per location) | shared (one for all)
    members: int = 1  # > 1: an ensemble of that many networks, logits and CAMs averaged
    readout: str = "direct"  # eval mode: direct | swap_mean (mean over both knee orders)

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}, got {self.combine!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if not (self.width > 0 and self.input_size >= 16 and self.n_locations >= 1 and self.members >= 1):
            raise ValueError(
                f"width > 0, input_size >= 16, n_locations >= 1 and members >= 1 expected, got {self}"
            )


class SiameseNet(nn.Module):
    """Siamese pain classifier over 2 knees x S slice locations (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        n_branches = config.n_locations if config.mode == "paper" else 1
        self.branches = nn.ModuleList(build_branch(config.branch, config.width) for _ in range(n_branches))
        channels = self.branches[0].out_channels
        self.feature_dim = 2 * channels if config.combine == "concat" else channels
        self.classifier: nn.Module = (
            SharedLocationLinear(config.n_locations, self.feature_dim)
            if config.head == "shared"
            else nn.Linear(config.n_locations * self.feature_dim, 2)
        )
        self.location_heads = nn.ModuleList(
            nn.Linear(self.feature_dim, 2) for _ in range(n_branches if config.mode == "paper" else 0)
        )
        self.channels_last = False

    # -- pieces -------------------------------------------------------------------------------
    def _run_branch(self, index: int, slices: torch.Tensor) -> torch.Tensor:
        """Maps of a (N, H, W) stack through branch ``index``: (N, C, h, w)."""
        x = slices.unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.branches[index](x)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Final maps of every knee and slice: (B, 2, S, C, h, w)."""
        if x.ndim != 5 or x.shape[1] != 2 or x.shape[2] != self.config.n_locations:
            raise ValueError(f"expected input (B, 2, {self.config.n_locations}, H, W), got {tuple(x.shape)}")
        b, _, s, h, w = x.shape
        if len(self.branches) == 1:  # one batched call over all knees and slices
            maps = self._run_branch(0, x.reshape(b * 2 * s, h, w))
            return maps.reshape(b, 2, s, *maps.shape[1:])
        per_location = [self._run_branch(i, x[:, :, i].reshape(b * 2, h, w)) for i in range(s)]
        return torch.stack([m.reshape(b, 2, *m.shape[1:]) for m in per_location], dim=2)

    def combine(self, pooled: torch.Tensor) -> torch.Tensor:
        """Combine pooled (..., 2, [S,] C) pairs along the knee axis 1 -> (..., [S,] D)."""
        return combine_pair(pooled, self.config.combine)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Combined pooled features per location: (B, S, D); the classifier's input."""
        return self.combine(self.feature_maps(x).mean(dim=(-2, -1)))

    # -- outputs ------------------------------------------------------------------------------
    @property
    def swap_mean(self) -> bool:
        """True when this forward pass reads out the mean over both knee orders (eval mode only)."""
        return self.config.readout == "swap_mean" and not self.training

    def cam_bias(self) -> torch.Tensor:
        """The constant of the CAM identity: b_1 - b_0, or 0 under the ``swap_mean`` readout."""
        bias = self.classifier.bias
        return torch.zeros_like(bias[0]) if self.swap_mean else bias[1] - bias[0]

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2) of pooled (B, 2, S, C) maps under this pass's readout."""
        logits = self.classifier(self.combine(pooled).flatten(1))
        if self.swap_mean:
            swapped = self.classifier(self.combine(pooled.flip(1)).flatten(1))
            logits = (logits + swapped.flip(-1)) / 2  # class-matched: right in the swap is left here
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2) of a batch (B, 2, S, H, W); class 1 = right knee painful."""
        return self._logits(self.feature_maps(x).mean(dim=(-2, -1)))

    def forward_location(self, pair: torch.Tensor, location: int) -> torch.Tensor:
        """``paper`` mode, stage 1: logits of location ``location``'s own model on (B, 2, H, W)."""
        if self.config.mode != "paper":
            raise ValueError("forward_location exists only in 'paper' mode (one model per location)")
        b, _, h, w = pair.shape
        maps = self._run_branch(location, pair.reshape(b * 2, h, w))
        pooled = maps.mean(dim=(-2, -1)).reshape(b, 2, -1)
        return self.location_heads[location](self.combine(pooled))

    def _cams(
        self, first: torch.Tensor, second: torch.Tensor, pooled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Direct-readout CAMs (B, S, h, w) of the knees in the first (left) and the second (right)
        position, from their float32 final maps (B, S, C, h, w) and the pooled pair (B, 2, S, C)
        in that order."""
        weight = self.classifier.weight.float()
        w = (weight[1] - weight[0]).reshape(self.config.n_locations, self.feature_dim)
        if self.config.combine == "concat":
            c = first.shape[2]
            return (
                -torch.einsum("bschw,sc->bshw", first, w[:, :c]),
                torch.einsum("bschw,sc->bshw", second, w[:, c:]),
            )
        if self.config.combine == "relu_diff":
            gated = (pooled[:, 0] - pooled[:, 1] > 0).float() * w  # (B, S, C): the ReLU's state
        else:
            gated = w.expand(first.shape[0], -1, -1)
        return -torch.einsum("bschw,bsc->bshw", first, gated), -torch.einsum("bschw,bsc->bshw", second, gated)

    def forward_with_cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, 2) and CAMs (B, 2 knees, S, h, w) from one forward pass (no hooks).

        ``cams[:, k]`` is knee k's evidence that it is the painful knee; see the module docstring
        for the exact identity with the logits.
        """
        maps = self.feature_maps(x)
        pooled = maps.mean(dim=(-2, -1))
        logits = self._logits(pooled)
        left, right = maps[:, 0].float(), maps[:, 1].float()  # once, for both passes under swap_mean
        cam_left, cam_right = self._cams(left, right, pooled)
        if self.swap_mean:  # the swapped pair: the right knee first, the left knee in the right position
            swapped_right, swapped_left = self._cams(right, left, pooled.flip(1))
            cam_left, cam_right = (cam_left + swapped_left) / 2, (cam_right + swapped_right) / 2
        return logits, torch.stack([cam_left, cam_right], dim=1)


class SiameseEnsemble(nn.Module):
    """``config.members`` SiameseNets of one architecture; logits and CAMs are the members' means.

    Members are built one after another from the current random state, so member 0 starts from
    the weights a single network built from the same seed would have.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(SiameseNet(replace(config, members=1)) for _ in range(config.members))

    def cam_bias(self) -> torch.Tensor:
        """The constant of the CAM identity: the members' mean (see :meth:`SiameseNet.cam_bias`)."""
        return torch.stack([member.cam_bias() for member in self.members]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits (B, 2) of the members."""
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def forward_with_cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean logits (B, 2) and mean CAMs (B, 2, S, h, w) of the members (one pass each)."""
        outputs = [member.forward_with_cams(x) for member in self.members]
        logits = torch.stack([logit for logit, _ in outputs]).mean(dim=0)
        return logits, torch.stack([cams for _, cams in outputs]).mean(dim=0)


def build_model(config: dict[str, Any] | ModelConfig) -> SiameseNet | SiameseEnsemble:
    """A freshly initialised network for ``config`` (a ModelConfig or its JSON dict): a
    :class:`SiameseNet`, or a :class:`SiameseEnsemble` when ``members`` > 1."""
    if isinstance(config, dict):
        config = ModelConfig.from_json(config)
    return SiameseEnsemble(config) if config.members > 1 else SiameseNet(config)
