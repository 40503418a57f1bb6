"""Saving and reloading pruned models, transformers and timm, through their own layouts.

transformers models are saved by their own ``save_pretrained`` (``AutoModel*.from_pretrained`` reloads
them: :mod:`.loader`), timm models in timm's Hub layout; either way config.json carries the pruning
record (:mod:`hf_prune.graph.record`). A model whose masks are still active is saved dense, with its
controller's state (:mod:`.pruning_state`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import PrunedModelError
from ..graph.record import (
    CONFIG_NAME, TIMM_KEY, check_record, is_timm_config, model_library, narrow, pruning_record, record_shapes,
    saved_record, set_record,
)
from .checkpoints import publish_directory
from .pruning_state import save_pruning_state
from .weights import WEIGHTS_NAME, check_weights, read_json, weight_files, weight_shapes

if TYPE_CHECKING:
    from ..algorithm.controller import FilterPruningController

__all__ = ["PrunedModelError", "ensure_stripped", "from_pretrained", "logits", "save_pretrained"]


def logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``model``'s class logits for a batch of images."""
    if model_library(model) == "timm":
        return model(pixel_values)
    return class_scores(model(pixel_values=pixel_values))


def class_scores(output: Any) -> torch.Tensor:
    """The class scores of a transformers model's output: ``logits`` (PP-LCNet returns them as ``last_hidden_state``)."""
    return output.logits if "logits" in output else output.last_hidden_state


def ensure_stripped(model: nn.Module, controller: FilterPruningController | None, action: str) -> nn.Module:
    """``model`` itself if no masks act in it; else a stripped copy (``controller`` required)."""
    from ..algorithm.controller import has_pruning_masks

    if not has_pruning_masks(model):
        return model
    if controller is None:
        raise PrunedModelError(f"cannot {action} a model whose pruning masks are still active: strip it first "
                               "(controller.strip_model(model)) or pass controller=... to strip a copy")
    return controller.strip_model(model, do_copy=True)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike[str], *,
                    controller: FilterPruningController | None = None, model_args: dict[str, Any] | None = None,
                    **kwargs: Any) -> Path:
    """Save a transformers or timm model so that :func:`from_pretrained` rebuilds it exactly.

    transformers models are saved in their own layout (``AutoModel*.from_pretrained`` reloads them
    wherever hf_prune is installed), timm models in timm's Hub layout; ``config.json`` records the
    stripped shapes. The save is atomic: files are written to a temporary directory that then replaces
    ``save_directory``, so a failed save leaves the previous one intact. An existing ``save_directory``
    must be empty or a saved model (config.json, no subdirectories): a save never wipes other files.

    ``controller``: its config and statistics go into the record; a model whose masks are still
    active is saved unstripped, with this controller's state
    (:func:`~.pruning_state.load_pruning_controller` resumes it).
    ``model_args``: timm constructor arguments the factory did not record. ``kwargs`` go to
    transformers' ``save_pretrained``. Returns the directory.
    """
    from ..algorithm.controller import has_pruning_masks

    kind = model_library(model)
    masked = has_pruning_masks(model)
    if masked and (controller is None or controller.model is not model):
        raise PrunedModelError("the model's pruning masks are still active: pass the controller that owns them "
                               "(controller=...) to save the run in progress, or strip the model first")
    previous = pruning_record(model) or {}
    pruning = controller.summary() if controller is not None else previous.get("pruning")
    record_shapes(model, pruning, model_args)
    record = pruning_record(model)
    target = Path(save_directory)
    _check_replaceable(target)

    def write(tmp: Path) -> None:
        if kind == "transformers":
            model.save_pretrained(tmp, **kwargs)
        else:
            _save_timm(model, tmp, record, model_args)
        if masked:
            save_pruning_state(controller, tmp)

    return publish_directory(target, write)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything but an empty directory or a saved model (a Trainer's checkpoints, say)."""
    if target.exists():
        entries = list(target.iterdir()) if target.is_dir() else None
        if entries is None or any(e.is_dir() for e in entries) or (entries and not (target / CONFIG_NAME).is_file()):
            raise PrunedModelError(f"refusing to replace {target}: it is not a saved model directory "
                                   "(save into a new or empty directory)")


def _save_timm(model: nn.Module, directory: Path, record: dict[str, Any] | None,
               model_args: dict[str, Any] | None) -> None:
    """timm's Hub layout (what ``save_for_hf`` writes), with the record added to config.json.

    The weights are written by safetensors' ``save_model``, which stores a tensor that modules share
    (CoaT's shared convolutional position encodings) once, where ``save_for_hf`` refuses the model.
    """
    from safetensors.torch import save_model
    from timm.models._hub import save_config_for_hf

    save_model(model, str(directory / WEIGHTS_NAME))
    save_config_for_hf(model, str(directory / CONFIG_NAME), model_args=model_args)
    if record is not None:
        config = read_json(directory / CONFIG_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps({**config, TIMM_KEY: record}, indent=2), encoding="utf-8")


def _local_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a directory, else the downloaded snapshot of the Hub repository it names."""
    directory = Path(path).expanduser()
    if directory.is_dir():
        return directory
    spec = str(path)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise PrunedModelError(f"{spec}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec))
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise PrunedModelError(f"{spec}: not a local directory, and the Hub has no such repository or cannot be "
                               f"reached ({reason})") from exc


def from_pretrained(path: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """The model saved in ``path`` (a directory or a Hub repository id), in eval mode.

    Reads transformers and timm layouts, stripped (shapes recorded by :func:`save_pretrained`) or
    not. ``kwargs`` go to transformers' ``from_pretrained``.
    """
    directory = _local_directory(path)
    config_file = directory / CONFIG_NAME
    config = read_json(config_file)
    record = saved_record(config)
    if record is not None:
        check_record(record, config_file)
        for file in weight_files(directory):  # missing or damaged weights: named here, not by transformers
            weight_shapes(file, source=directory)
    if is_timm_config(config):
        return _load_timm(directory, config, record)
    if "model_type" in config:
        import transformers

        architectures = config.get("architectures") or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        return (cls or transformers.AutoModelForImageClassification).from_pretrained(directory, **kwargs)
    raise PrunedModelError(f"{config_file}: neither a transformers config (no 'model_type') nor a timm config "
                           "(no 'architecture')")


def _load_timm(directory: Path, config: dict[str, Any], record: dict[str, Any] | None) -> nn.Module:
    import timm
    from safetensors.torch import load_file

    config_file = directory / CONFIG_NAME
    try:
        model = timm.create_model(f"local-dir:{directory}", pretrained=False)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise PrunedModelError(f"{config_file}: cannot build timm model {config['architecture']!r}: {exc}") from None
    if record is not None:
        narrow(model, record, config_file)
    check_weights(model, weight_files(directory), directory)
    for file in weight_files(directory):
        model.load_state_dict(load_file(file), strict=False)  # a shared tensor is saved under one of its names
    set_record(model, record)
    return model.eval()
