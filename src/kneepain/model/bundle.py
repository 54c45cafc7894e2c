"""Model bundles: weights in safetensors plus model.json; a bundle alone is enough for ``predict``.

No pickle anywhere: a bundle from someone else cannot run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kneepain import __version__
from kneepain.contracts import BUNDLE_META, BUNDLE_WEIGHTS
from kneepain.fileio import atomic_dir
from kneepain.model.siamese import ModelConfig, SiameseNet, build_model


class BundleError(ValueError):
    """A bundle that is missing, unreadable or does not match its own architecture record."""


def save_bundle(model: SiameseNet, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/model.json`` atomically (whole or nothing).

    ``meta`` should hold ``preprocessing`` (WORK/preprocess/config.json) and ``training``; the
    architecture (model.json ``architecture``), ``input_size`` and package version are added here.
    """
    from safetensors.torch import save_file

    record = dict(meta)
    record["architecture"] = {**model.config.to_json(), "name": "siamese"}
    record["input_size"] = model.config.input_size
    record["package_version"] = __version__
    record.setdefault("format", 1)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / BUNDLE_WEIGHTS), metadata={"format": "kneepain-bundle"})
        (tmp / BUNDLE_META).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return Path(out_dir)


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """model.json of a bundle folder (or of the model.json path itself)."""
    path = Path(path)
    folder = path.parent if path.name == BUNDLE_META else path
    meta_path = folder / BUNDLE_META
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BundleError(f"{meta_path}: bundle metadata not found") from error
    except ValueError as error:
        raise BundleError(f"{meta_path}: not valid JSON ({error})") from error


def load_bundle(path: str | Path) -> tuple[SiameseNet, dict[str, Any]]:
    """Rebuild the model of a bundle folder, load its weights, and return it in eval mode with meta."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path.parent if path.name == BUNDLE_META else path
    meta = read_bundle_meta(folder)
    try:
        model = build_model(ModelConfig.from_json(meta["architecture"]))
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{folder / BUNDLE_META}: bad architecture record ({error})") from error
    weights = folder / BUNDLE_WEIGHTS
    if not weights.exists():
        raise BundleError(f"{weights}: bundle weights not found")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as error:
        raise BundleError(f"{weights}: weights do not fit the recorded architecture ({error})") from error
    return model.eval(), meta
