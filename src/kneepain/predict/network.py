"""One person through the network as fast as a CPU allows: logits and CAMs from one pass.

All 46 slices go through the branches in one call. A ``joint`` model (one shared branch) runs
them as one batch already. A ``paper`` model has one branch per slice location, which the model
itself runs as 23 batches of 2 slices; here the 23 branches are merged into one network of
grouped convolutions (``groups=23``: channel block g sees only slice g, with branch g's weights),
so the 46 slices go through each layer in one call, and each BatchNorm is folded into its
convolution (eval mode: running statistics). The maps, logits and CAMs are those of the model
(``forward_with_cams`` itself is used; only ``feature_maps`` is replaced), equal to ~1e-6.
Weights and inputs are channels_last, the pass runs under ``torch.inference_mode``. Measured
before/after on the 2-core AVX2 machine: docs/predict.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kneepain.hardware import autocast_for
from kneepain.model.grouped import grouped_features
from kneepain.model.siamese import SiameseEnsemble, SiameseNet


def _fold_batch_norms(sequence: nn.Sequential) -> nn.Sequential:
    """Fold each BatchNorm2d into the Conv2d right before it (in place; eval-mode statistics)."""
    layers = list(sequence)
    for i in range(len(layers) - 1):
        conv, norm = layers[i], layers[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
            sequence[i + 1] = nn.Identity()
    return sequence


def merge_branches(branches: nn.ModuleList) -> nn.Sequential:
    """The location branches as one grouped network, BatchNorms folded: (N, G, H, W) -> (N, G * C, h, w).

    The grouping is :func:`kneepain.model.grouped.grouped_features`: every branch must be one
    ``features`` Sequential of the same layer plan (KneeNet, VGG16-GAP, AlexNet-GAP are). Raises
    ValueError for branches that cannot be grouped.
    """
    with torch.no_grad():
        return _fold_batch_norms(grouped_features(branches).requires_grad_(False).eval())


class MergedSiameseNet(SiameseNet):
    """A ``paper``-mode SiameseNet whose 23 branches run as one grouped network (inference only).

    Built from a trained network (:func:`merged_network`): it shares that network's classifier
    and first branch (the shape reference) and holds the merged, BN-folded copy of the branches.
    """

    merged: nn.Sequential

    def __init__(self, source: SiameseNet) -> None:
        nn.Module.__init__(self)  # not SiameseNet's: the 23 branches are not built again
        self.config = source.config
        self.feature_dim = source.feature_dim
        self.branches = nn.ModuleList([source.branches[0]])
        self.classifier = source.classifier
        self.location_heads = nn.ModuleList()
        self.merged = merge_branches(source.branches)
        self.channels_last = source.channels_last

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Final maps of every knee and slice: (B, 2, S, C, h, w), all slices in one call."""
        if x.ndim != 5 or x.shape[1] != 2 or x.shape[2] != self.config.n_locations:
            raise ValueError(f"expected input (B, 2, {self.config.n_locations}, H, W), got {tuple(x.shape)}")
        b, _, s, h, w = x.shape
        stacked = x.reshape(b * 2, s, h, w).contiguous(memory_format=torch.channels_last)
        maps = self.merged(stacked)
        return maps.reshape(b, 2, s, -1, *maps.shape[-2:])


def merged_network(model: SiameseNet) -> SiameseNet:
    """A new network computing what ``model`` computes, its per-location branches merged into one
    grouped network (``paper`` mode); ``model`` itself when it has one branch (``joint``)."""
    return MergedSiameseNet(model.eval()) if len(model.branches) > 1 else model


def prepare_for_inference(model: SiameseNet | SiameseEnsemble) -> SiameseNet | SiameseEnsemble:
    """The network to predict with: eval mode, channels_last, and for a ``paper`` model the merged
    branches (:func:`merged_network`; an ensemble's members each). Use the returned network."""
    if isinstance(model, SiameseEnsemble):
        for index, member in enumerate(model.members):
            model.members[index] = prepare_for_inference(member)
        return model.eval()
    prepared = merged_network(model.eval())
    with torch.no_grad():
        prepared.to(memory_format=torch.channels_last)
    prepared.channels_last = True
    return prepared.eval()


def run_network(
    model: SiameseNet | SiameseEnsemble, x: torch.Tensor, precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B, 2) [left painful, right painful] and CAMs (B, 2, S, h, w) float32 of ``x``.

    ``precision`` is a resolved one (fp32 | bf16; kneepain.hardware.resolve_precision picks it).
    """
    with torch.inference_mode(), autocast_for(precision, torch.device("cpu")):
        logits, cams = model.forward_with_cams(x)
    probs = torch.softmax(logits.float(), dim=1)
    return probs.numpy(), cams.float().numpy()
