"""The Siamese network (branches, combination, CAMs) and its safetensors + JSON bundles."""

from kneepain.model.branches import VGG16GAP, AlexNetGAP, KneeNet, build_branch, load_pretrained
from kneepain.model.bundle import Bundle, BundleError, load_bundle, read_bundle_meta, save_bundle
from kneepain.model.inputs import InputSpec, to_input
from kneepain.model.siamese import COMBINATIONS, MODES, ModelConfig, SiameseEnsemble, SiameseNet, build_model

__all__ = [
    "COMBINATIONS",
    "MODES",
    "VGG16GAP",
    "AlexNetGAP",
    "Bundle",
    "BundleError",
    "InputSpec",
    "KneeNet",
    "ModelConfig",
    "SiameseEnsemble",
    "SiameseNet",
    "build_branch",
    "build_model",
    "load_bundle",
    "load_pretrained",
    "read_bundle_meta",
    "save_bundle",
    "to_input",
]
