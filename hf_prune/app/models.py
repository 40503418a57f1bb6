"""Model specs → (model, example inputs): timm names, local timm / transformers directories, Hub ids.

Spec forms, resolved in this order:

- ``timm/<name>`` or ``timm:<name>``: a timm registry name (a pretrained tag such as ``.a1_in1k`` is allowed);
- ``hf:<id>``: a transformers model on the Hugging Face Hub;
- a ``.json`` transformers config file (random init);
- an existing directory: timm's Hub layout if its ``config.json`` has an ``architecture`` key, else a
  transformers directory; weights in it (``model.safetensors`` / ``pytorch_model.bin``) are always loaded;
  a stripped model hf_prune saved (its config.json records the pruned shapes) loads through
  :func:`hf_prune.integrations.serialization.from_pretrained`;
- a bare name timm knows;
- ``org/name``: a transformers model on the Hugging Face Hub.

Anything else raises :class:`ModelLoadError` with the closest timm names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import HfPruneError
from ..integrations.serialization import from_pretrained, saved_record
from ..model_kind import example_inputs, saved_library
from ..text import did_you_mean

__all__ = ["ModelLoadError", "load_model"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
"""Files whose presence marks a local directory as holding weights."""


class ModelLoadError(HfPruneError):
    """A model spec names no model that can be built here."""


def load_model(spec: str, *, num_classes: int | None = None, pretrained: bool = False,
               image_size: int | None = None) -> tuple[nn.Module, Any]:
    """The model ``spec`` names (in eval mode) and batch-1 example inputs for it.

    Example inputs are a tensor for timm models and ``{"pixel_values": tensor}`` for transformers
    models, sized by the model's config unless ``image_size`` overrides it. ``num_classes`` replaces
    the classifier head; ``pretrained`` loads timm or Hub weights (local weights are always loaded).
    """
    if spec.startswith(("timm/", "timm:")):
        return _timm_model(spec[5:], spec, num_classes, pretrained, image_size)
    if spec.startswith("hf:"):
        return _hub_model(spec[3:], spec, num_classes, pretrained, image_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _local_model(path, num_classes, pretrained, image_size)
    if path.is_file() and path.suffix == ".json":  # a transformers config file: random init
        return _transformers_model(str(path), spec, num_classes, False, image_size)
    if timm.is_model(spec):
        return _timm_model(spec, spec, num_classes, pretrained, image_size)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model {spec!r}: no such directory")
    if spec.count("/") == 1:
        return _hub_model(spec, spec, num_classes, pretrained, image_size)
    raise ModelLoadError(f"unknown model {spec!r}: not a timm model name, a local directory or a Hub id"
                         f"{_suggestions(spec)}")


def _timm_model(name: str, spec: str, num_classes: int | None, pretrained: bool,
                image_size: int | None) -> tuple[nn.Module, torch.Tensor]:
    """A timm registry model."""
    if not timm.is_model(name):
        raise ModelLoadError(f"unknown timm model {spec!r}{_suggestions(name)}")
    cfg = timm.models.get_pretrained_cfg(name)
    fixed = bool(cfg and cfg.fixed_input_size)
    return _create_timm(name, fixed, num_classes, pretrained, image_size)


def _local_model(path: Path, num_classes: int | None, pretrained: bool,
                 image_size: int | None) -> tuple[nn.Module, Any]:
    """A timm (``config.json`` with ``architecture``) or transformers model saved in ``path``."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json")
    has_weights = any((path / name).is_file() for name in WEIGHT_FILES)
    if pretrained and not has_weights:
        raise ModelLoadError(f"--pretrained requested but {str(path)!r} has no weights "
                             f"(expected one of: {', '.join(WEIGHT_FILES[:2])})")
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"cannot parse {config_file}: {exc}") from exc
    if isinstance(saved, dict) and saved_record(saved) is not None:
        return _pruned_model(path, num_classes, image_size)
    if isinstance(saved, dict) and saved_library(saved) == "timm":
        if not timm.is_model(saved["architecture"]):
            raise ModelLoadError(f"{config_file}: unknown timm architecture {saved['architecture']!r}"
                                 f"{_suggestions(saved['architecture'])}")
        fixed = bool(saved.get("pretrained_cfg", saved).get("fixed_input_size"))
        return _create_timm(f"local-dir:{path}", fixed, num_classes, has_weights, image_size)
    return _transformers_model(str(path), str(path), num_classes, has_weights, image_size)


def _pruned_model(path: Path, num_classes: int | None, image_size: int | None) -> tuple[nn.Module, Any]:
    """A stripped model saved by hf_prune (its config.json records the pruned shapes)."""
    if num_classes is None:
        model = from_pretrained(path).eval()
    elif saved_library(json.loads((path / "config.json").read_text(encoding="utf-8"))) == "transformers":
        model = from_pretrained(path, num_labels=num_classes, ignore_mismatched_sizes=True).eval()
    else:
        raise ModelLoadError(f"{path}: holds a pruned timm model; replacing its classifier head is not supported "
                             "(a pruned transformers model's is)")
    return model, example_inputs(model, size=image_size)


def _hub_model(model_id: str, spec: str, num_classes: int | None, pretrained: bool,
               image_size: int | None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A transformers model from the Hugging Face Hub; offline or unknown ids raise ModelLoadError."""
    try:
        return _transformers_model(model_id, spec, num_classes, pretrained, image_size)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ModelLoadError(
            f"model {spec!r} is neither a timm model name nor a local directory, and the Hugging Face Hub "
            f"could not be reached or has no such id ({reason}){_suggestions(model_id.rpartition('/')[2])}"
        ) from exc


def _create_timm(name: str, fixed_input_size: bool, num_classes: int | None, pretrained: bool,
                 image_size: int | None) -> tuple[nn.Module, torch.Tensor]:
    """``timm.create_model``; models with a fixed input size are built for ``image_size``."""
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if image_size is not None and fixed_input_size:
        kwargs["img_size"] = image_size
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs).eval()
    except OSError as exc:  # weights not downloadable (offline, unknown tag) or unreadable
        reason = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"cannot load pretrained weights of timm model {name!r}: {reason}") from exc
    return model, example_inputs(model, size=image_size)


def _transformers_model(source: str, spec: str, num_classes: int | None, weights: bool,
                        image_size: int | None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """An image-classification model from a transformers config (random init) or its weights.

    ``image_size`` is written into the config only when building from it (random init), where it
    also sizes ViT position embeddings; with weights it only sizes the example inputs.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(source)
    except ValueError as exc:
        raise ModelLoadError(f"model {spec!r}: cannot read its transformers config: {exc}") from exc
    if num_classes is not None:
        config.num_labels = num_classes
    try:
        if weights:
            model = AutoModelForImageClassification.from_pretrained(
                source, config=config, ignore_mismatched_sizes=num_classes is not None)
        else:
            if image_size is not None and hasattr(config, "image_size"):
                config.image_size = image_size
            model = AutoModelForImageClassification.from_config(config)
    except ValueError as exc:
        raise ModelLoadError(f"model {spec!r} ({type(config).__name__}) is not a transformers "
                             f"image-classification model: {exc}") from exc
    return model.eval(), example_inputs(model, size=image_size)


def _suggestions(name: str) -> str:
    """``"; did you mean: a, b?"`` with up to 5 timm model names close to ``name``, or ``""``."""
    return did_you_mean(name.lower(), timm.list_models(), n=5)
