"""The Siamese network: the paper's branch layer by layer, map sizes, CAM = logit decomposition, bundles."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kneepain.model import (
    VGG16GAP,
    AlexNetGAP,
    BundleError,
    KneeNet,
    build_model,
    load_bundle,
    load_pretrained,
    save_bundle,
)


def test_kneenet_layers_match_the_paper() -> None:
    layers = list(KneeNet().features)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    spec = [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs]
    assert spec == [
        (1, 64, (7, 7), (2, 2), (3, 3)),
        (64, 128, (3, 3), (1, 1), (1, 1)),
        (128, 256, (3, 3), (1, 1), (1, 1)),
        (256, 256, (3, 3), (1, 1), (1, 1)),
        (256, 512, (3, 3), (1, 1), (1, 1)),
        (512, 512, (3, 3), (1, 1), (1, 1)),
    ]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == (
        ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
        + ["Conv2d", "BatchNorm2d", "ReLU"] * 2
        + ["MaxPool2d"]
        + ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    )
    pools = [m for m in layers if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1), (2, 2, 0)]


def test_kneenet_gives_512_by_28_by_28_maps_for_224() -> None:
    with torch.no_grad():
        assert KneeNet().eval()(torch.zeros(1, 1, 224, 224)).shape == (1, 512, 28, 28)


@pytest.mark.parametrize(("branch", "size"), [(VGG16GAP, 14), (AlexNetGAP, 13)])
def test_alternative_branches_map_sizes(branch: type[nn.Module], size: int) -> None:
    net = branch(width=0.125)
    with torch.no_grad():
        maps = net(torch.zeros(1, 1, 224, 224))
    assert maps.shape == (1, net.out_channels, size, size)


@pytest.mark.parametrize("combine", ["relu_diff", "diff", "concat"])
@pytest.mark.parametrize(
    ("mode", "head"), [("joint", "location"), ("paper", "location"), ("joint", "shared")]
)
@pytest.mark.parametrize("readout", ["direct", "swap_mean"])
def test_cams_decompose_the_logit_difference_exactly(
    combine: str, mode: str, head: str, readout: str
) -> None:
    torch.manual_seed(0)
    model = build_model(
        {
            "width": 0.0625,
            "input_size": 32,
            "combine": combine,
            "mode": mode,
            "head": head,
            "readout": readout,
        }
    ).eval()
    with torch.no_grad():  # random head weights so every channel matters, both signs
        for parameter in model.classifier.parameters():
            parameter.normal_()
    x = torch.rand(3, 2, 23, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cams = model.forward_with_cams(x)
        plain = model(x)
    assert cams.shape == (3, 2, 23, 4, 4)
    torch.testing.assert_close(logits, plain)
    bias = model.classifier.bias[1] - model.classifier.bias[0]
    assert float(model.cam_bias().detach()) == (0.0 if readout == "swap_mean" else float(bias.detach()))
    rebuilt = model.cam_bias() + cams[:, 1].mean(dim=(-2, -1)).sum(1) - cams[:, 0].mean(dim=(-2, -1)).sum(1)
    torch.testing.assert_close(rebuilt, logits[:, 1] - logits[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("combine", "readout"), [("relu_diff", "direct"), ("diff", "direct"), ("relu_diff", "swap_mean")]
)
def test_ensemble_averages_members_and_its_cams_still_decompose_the_logit(
    combine: str, readout: str, tmp_path
) -> None:
    torch.manual_seed(0)
    architecture = {
        "width": 0.0625,
        "input_size": 32,
        "mode": "joint",
        "head": "shared",
        "combine": combine,
        "readout": readout,
    }
    ensemble = build_model({**architecture, "members": 3}).eval()
    torch.manual_seed(0)
    single = build_model(architecture).eval()
    assert len(ensemble.members) == 3
    for key, value in single.state_dict().items():  # member 0 starts where one network would
        torch.testing.assert_close(ensemble.members[0].state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(
        ensemble.members[1].branches[0].features[0].weight, single.branches[0].features[0].weight
    )
    x = torch.rand(2, 2, 23, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cams = ensemble.forward_with_cams(x)
        members = [member.forward_with_cams(x) for member in ensemble.members]
        torch.testing.assert_close(ensemble(x), logits)
    torch.testing.assert_close(logits, torch.stack([m[0] for m in members]).mean(0))
    torch.testing.assert_close(cams, torch.stack([m[1] for m in members]).mean(0))
    rebuilt = (
        ensemble.cam_bias() + cams[:, 1].mean(dim=(-2, -1)).sum(1) - cams[:, 0].mean(dim=(-2, -1)).sum(1)
    )
    torch.testing.assert_close(rebuilt, logits[:, 1] - logits[:, 0], atol=1e-5, rtol=1e-5)
    loaded, meta = load_bundle(save_bundle(ensemble, {}, tmp_path / "b"))
    assert meta["architecture"]["members"] == 3 and len(loaded.members) == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_with_cams(x)[1], cams)
    with pytest.raises(ValueError, match="members >= 1"):
        build_model({**architecture, "members": 0})


def test_shared_head_scores_every_location_with_one_weight_vector(tmp_path) -> None:
    """The shared head has one (2, D) weight; permuting the slice locations leaves its logits unchanged."""
    torch.manual_seed(0)
    model = build_model({"width": 0.0625, "input_size": 32, "mode": "joint", "head": "shared"}).eval()
    per_location = build_model({"width": 0.0625, "input_size": 32, "mode": "joint"})
    d = model.feature_dim
    assert model.classifier.shared_weight.shape == (2, d)
    assert sum(p.numel() for p in model.classifier.parameters()) == 2 * d + 2
    assert model.classifier.weight.shape == per_location.classifier.weight.shape == (2, 23 * d)
    x = torch.rand(2, 2, 23, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, :, torch.randperm(23)]), model(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(per_location(x[:, :, torch.randperm(23)]), per_location(x))
    loaded, meta = load_bundle(save_bundle(model, {}, tmp_path / "b"))
    assert meta["architecture"]["head"] == "shared"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_swapping_knees_swaps_the_diff_cams() -> None:
    """With a signed difference, each knee's map depends only on that knee's slices."""
    torch.manual_seed(0)
    model = build_model({"width": 0.0625, "input_size": 32, "combine": "diff", "mode": "joint"}).eval()
    x = torch.rand(2, 2, 23, 32, 32)
    with torch.no_grad():
        logits, cams = model.forward_with_cams(x)
        logits_s, cams_s = model.forward_with_cams(x.flip(1))
    torch.testing.assert_close(cams_s, cams.flip(1))
    torch.testing.assert_close(
        logits_s[:, 1] - logits_s[:, 0],
        -(logits[:, 1] - logits[:, 0]) + 2 * (model.classifier.bias[1] - model.classifier.bias[0]),
        atol=1e-5,
        rtol=1e-5,
    )


def test_swap_mean_readout_is_antisymmetric_and_equals_half_weight_diff(tmp_path) -> None:
    """swap_mean: the prediction for the swapped pair is the complement, identical knees give 0.5,
    a relu_diff network reads out as the same network with diff and half the classifier weights
    (bias dropped), training mode keeps the direct readout, and the choice survives a bundle."""
    torch.manual_seed(0)
    architecture = {"width": 0.0625, "input_size": 32, "mode": "joint", "head": "shared"}
    model = build_model({**architecture, "readout": "swap_mean"}).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.7, -0.4]))
    x = torch.rand(3, 2, 23, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        prob = torch.softmax(model(x), dim=1)[:, 1]
        prob_swapped = torch.softmax(model(x.flip(1)), dim=1)[:, 1]
        twins = torch.softmax(model(x[:, :1].expand(-1, 2, -1, -1, -1)), dim=1)[:, 1]
        torch.testing.assert_close(prob + prob_swapped, torch.ones(3))
        torch.testing.assert_close(twins, torch.full((3,), 0.5))
        as_diff = build_model({**architecture, "combine": "diff"}).eval()
        as_diff.load_state_dict(model.state_dict())
        as_diff.classifier.shared_weight.mul_(0.5)
        as_diff.classifier.bias.zero_()
        d = model(x)[:, 1] - model(x)[:, 0]
        torch.testing.assert_close(d, as_diff(x)[:, 1] - as_diff(x)[:, 0], atol=1e-5, rtol=1e-5)
        _, cams = model.forward_with_cams(x)
        _, diff_cams = as_diff.forward_with_cams(x)
        torch.testing.assert_close(cams, diff_cams, atol=1e-5, rtol=1e-5)
        direct = build_model(architecture).eval()
        direct.load_state_dict(model.state_dict())
        assert not torch.allclose(direct(x), model(x))
        model.train()
        torch.testing.assert_close(model(x), direct.train()(x))
    loaded, meta = load_bundle(save_bundle(model.eval(), {}, tmp_path / "b"))
    assert meta["architecture"]["readout"] == "swap_mean" and loaded.swap_mean
    with pytest.raises(ValueError, match="readout must be one of"):
        build_model({**architecture, "readout": "both"})


def test_bad_input_shape_is_named() -> None:
    model = build_model({"width": 0.0625, "input_size": 32, "mode": "joint"})
    with pytest.raises(ValueError, match=r"expected input \(B, 2, 23"):
        model(torch.zeros(1, 2, 5, 32, 32))


def test_bundle_round_trip_gives_same_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model({"width": 0.0625, "input_size": 32, "mode": "paper", "combine": "concat"}).eval()
    out = save_bundle(model, {"preprocessing": {"image_size": 224}, "training": {"lr": 0.1}}, tmp_path / "b")
    loaded, meta = load_bundle(out)
    assert not loaded.training
    assert meta["architecture"]["mode"] == "paper" and meta["architecture"]["input_size"] == 32
    assert "input_size" not in meta  # stored once, in the architecture (issue 20)
    assert meta["preprocessing"] == {"image_size": 224} and meta["package_version"]
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    x = torch.rand(2, 2, 23, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bundle_with_wrong_architecture_is_refused(tmp_path) -> None:
    model = build_model({"width": 0.0625, "input_size": 32, "mode": "joint"})
    out = save_bundle(model, {}, tmp_path / "b")
    meta = json.loads((out / "model.json").read_text())
    meta["architecture"]["width"] = 0.125
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"model\.safetensors"):
        load_bundle(out)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_pretrained_rgb_weights_load_summed_over_colour(tmp_path) -> None:
    net = AlexNetGAP(width=0.125)
    rgb = torch.randn(net.features[0].out_channels, 3, 11, 11)
    save_file(
        {"features.0.weight": rgb, "classifier.1.weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors")
    )
    assert load_pretrained(net, tmp_path / "w.safetensors") == ["features.0.weight"]
    torch.testing.assert_close(net.features[0].weight, rgb.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="no pickle"):
        load_pretrained(net, tmp_path / "w.pth")
