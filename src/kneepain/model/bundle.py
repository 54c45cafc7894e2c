"""Model bundles: weights in safetensors plus model.json; a bundle alone is enough for ``predict``.

No pickle anywhere: a bundle from someone else cannot run code when loaded. A bundle whose
preprocessing registers slices also carries the registration templates (``template.npy``, the
file ``kneepain preprocess`` wrote beside the cache, loaded with ``allow_pickle=False``) so
``kneepain predict`` reproduces the cache's input from the bundle folder alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from kneepain import __version__
from kneepain.contracts import BUNDLE_META, BUNDLE_WEIGHTS, TEMPLATE_FILE
from kneepain.fileio import array_sha256, atomic_dir
from kneepain.model.inputs import InputSpec
from kneepain.model.siamese import ModelConfig, SiameseEnsemble, SiameseNet, build_model

BUNDLE_TEMPLATES = TEMPLATE_FILE  # the same name as WORK/preprocess/template.npy


class BundleError(ValueError):
    """A bundle that is missing, unreadable or does not match its own architecture record."""


def save_bundle(
    model: SiameseNet | SiameseEnsemble,
    meta: dict[str, Any],
    out_dir: str | Path,
    *,
    templates: np.ndarray | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors``, ``model.json`` and ``template.npy`` atomically (all or none).

    ``meta`` should hold ``preprocessing`` (WORK/preprocess/config.json), ``config`` (the run's
    configuration) and ``training``; the architecture (model.json ``architecture``, which holds
    the input size) and package version are added here.
    ``templates`` are the registration templates the preprocessing used; when the preprocessing
    record pins them by hash (``template_sha256``), a different array is refused before anything
    is written.
    """
    from safetensors.torch import save_file

    record = dict(meta)
    record["architecture"] = {**model.config.to_json(), "name": "siamese"}
    record.pop("input_size", None)  # stored once, in the architecture (older bundles had both)
    record["package_version"] = __version__
    record.setdefault("format", 1)
    record.pop("templates", None)  # describes this bundle's own file only, never one copied from another
    if templates is not None:
        templates = np.ascontiguousarray(templates, dtype=np.float32)
        digest = array_sha256(templates)
        pinned = (record.get("preprocessing") or {}).get("template_sha256")
        if pinned and pinned != digest:
            raise BundleError(
                f"{out_dir}: the templates given are not the ones the preprocessing record pins "
                f"(sha256 {digest[:12]} != {pinned[:12]}); bundle not written"
            )
        record["templates"] = {"file": BUNDLE_TEMPLATES, "sha256": digest, "shape": list(templates.shape)}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / BUNDLE_WEIGHTS), metadata={"format": "kneepain-bundle"})
        if templates is not None:
            with open(tmp / BUNDLE_TEMPLATES, "wb") as handle:
                np.save(handle, templates, allow_pickle=False)
        (tmp / BUNDLE_META).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return Path(out_dir)


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name == BUNDLE_META else path


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """model.json of a bundle folder (or of the model.json path itself)."""
    path = Path(path)
    if path.is_file() and path.name != BUNDLE_META:
        raise BundleError(
            f"{path}: is a file; a bundle is the folder holding {BUNDLE_META} and {BUNDLE_WEIGHTS} "
            f"(e.g. {path.parent if path.name == BUNDLE_WEIGHTS else 'WORK/runs/RUN/fold_00/bundle'})"
        )
    meta_path = _folder(path) / BUNDLE_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BundleError(f"{meta_path}: bundle metadata not found{_bundle_hint(path)}") from error
    except (OSError, ValueError) as error:
        raise BundleError(f"{meta_path}: not readable JSON ({error})") from error
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object")
    return meta


def _bundle_hint(path: Path) -> str:
    """'; use .../bundle' when ``path`` is a fold folder (or a run folder) that holds bundles."""
    if (path / "bundle" / BUNDLE_META).exists():
        return f"; {path} looks like a fold folder: use {path / 'bundle'}"
    folds = sorted(path.glob(f"fold_*/bundle/{BUNDLE_META}")) if path.is_dir() else []
    if folds:
        return f"; {path} looks like a run folder: use one fold's bundle, e.g. {folds[0].parent}"
    if not path.exists():
        return f" ({path} does not exist)"
    return ""


def load_bundle(path: str | Path) -> tuple[SiameseNet | SiameseEnsemble, dict[str, Any]]:
    """Rebuild the model of a bundle folder, load its weights, and return it in eval mode with meta."""
    from safetensors.torch import load_file

    folder = _folder(path)
    meta = read_bundle_meta(folder)
    try:
        config = ModelConfig.from_json(meta["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{folder / BUNDLE_META}: bad architecture record ({error})") from error
    weights = folder / BUNDLE_WEIGHTS
    if not weights.exists():
        raise BundleError(f"{weights}: bundle weights not found")
    # Built on the meta device and given the loaded tensors themselves (assign): no random
    # initialisation and no copy, which for the paper-size network (103 M parameters) is most of
    # the loading time.
    with torch.device("meta"):
        model = build_model(config)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise BundleError(
            f"{weights}: unreadable weights ({type(error).__name__}: {error}); the file is damaged or "
            "incomplete: copy the bundle again"
        ) from error
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise BundleError(f"{weights}: weights do not fit the recorded architecture ({error})") from error
    return model.eval(), meta


def load_bundle_templates(path: str | Path, meta: dict[str, Any] | None = None) -> np.ndarray | None:
    """The registration templates a bundle carries, checked against its preprocessing record.

    None when the bundle's preprocessing does not register (``register: false``). Raises
    BundleError naming the file when registration is on and the templates are missing,
    unreadable, or not the ones the preprocessing record (``template_sha256``) pins.
    """
    folder = _folder(path)
    meta = read_bundle_meta(folder) if meta is None else meta
    preprocessing = meta.get("preprocessing") or {}
    if not preprocessing.get("register", True):
        return None
    target = folder / BUNDLE_TEMPLATES
    if not target.exists():
        raise BundleError(
            f"{target}: registration templates not found; this bundle's preprocessing registers "
            "slices, so predict needs them (re-save the bundle with save_bundle(..., templates=...), "
            "or copy WORK/preprocess/template.npy of the cache it was trained on)"
        )
    try:
        templates = np.load(target, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise BundleError(f"{target}: unreadable registration templates ({error})") from error
    pinned = preprocessing.get("template_sha256") or (meta.get("templates") or {}).get("sha256")
    if pinned and array_sha256(templates) != pinned:
        raise BundleError(
            f"{target}: not the templates {folder / BUNDLE_META} records (sha256 differs); "
            "the bundle folder was mixed with another cache's template"
        )
    return templates


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode), its input specification and its records.

    The one way inference code (training's test predictions aside, which hold the network already)
    gets a network: cam, predict and the benchmarks read the input size and window here, never
    from the preprocessing record.
    """

    path: Path
    model: SiameseNet | SiameseEnsemble
    meta: dict[str, Any]
    input: InputSpec

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing record the training cache was made with (WORK/preprocess/config.json)."""
        return dict(self.meta.get("preprocessing") or {})

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Load a bundle folder (or its model.json); BundleError names the file when it cannot."""
        model, meta = load_bundle(path)
        return cls(_folder(path), model, meta, InputSpec(model.config.input_size, model.config.n_locations))

    def templates(self) -> np.ndarray | None:
        """The registration templates the bundle carries (None when its preprocessing does not register)."""
        return load_bundle_templates(self.path, self.meta)
