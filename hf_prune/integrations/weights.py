"""The weight files of a saved model: where they are, and whether they fit the model its config builds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import PrunedModelError
from ..graph.record import CONFIG_NAME, listed

__all__ = ["WEIGHTS_INDEX_NAME", "WEIGHTS_NAME", "check_weights", "read_json", "weight_files", "weight_shapes"]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PrunedModelError(f"{path.parent}: missing {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PrunedModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PrunedModelError(f"{path}: expected a JSON object")
    return data


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of the model saved in ``directory`` (sharded or not)."""
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        return [directory / name for name in sorted(set(read_json(index)["weight_map"].values()))]
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    raise PrunedModelError(f"{directory}: missing {WEIGHTS_NAME} (the model's weights)")


def _model_key(model: nn.Module, key: str) -> str:
    """The state-dict key of ``model`` that a saved tensor ``key`` loads into (transformers saves a
    ``TimmWrapper*`` model's weights without its ``timm_model.`` prefix, as timm's Hub files are)."""
    if isinstance(getattr(model, "timm_model", None), nn.Module) and not key.startswith("timm_model."):
        return f"timm_model.{key}"
    return key


def weight_shapes(file: Path, source: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the safetensors ``file``; a missing or damaged file is named."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise PrunedModelError(f"{source}: missing {file.name}, listed in {WEIGHTS_INDEX_NAME}")
    try:
        with safe_open(file, framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except SafetensorError as exc:
        raise PrunedModelError(f"{file}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def _shared_names(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, ...]]:
    """Each state-dict key → every key of the same tensor (modules that share a submodule or parameter)."""
    by_tensor: dict[tuple, list[str]] = {}
    for key, t in state.items():
        if t.device.type != "meta" and t.numel():
            by_tensor.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride()),
                                 []).append(key)
    return {key: tuple(keys) for keys in by_tensor.values() for key in keys}


def check_weights(model: nn.Module, files: Sequence[Path], source: str | os.PathLike[str], *,
                  only_recorded: dict[str, Any] | None = None) -> None:
    """Every tensor in the weight ``files`` exists in ``model`` with the same shape, and back.

    ``only_recorded``: a pruning record; then only the pruned dimensions of its tensors are compared, and
    only where the file names them as the model does: transformers' loader reports the rest itself (a new
    head it re-initializes with ``ignore_mismatched_sizes``; transformers 5 renames some checkpoint keys).
    """
    state = model.state_dict()
    expected = {k: tuple(t.shape) for k, t in state.items()}
    aliases = _shared_names(state)
    found = {_model_key(model, key): (shape, file.name)
             for file in files for key, shape in weight_shapes(file, source).items()}
    if only_recorded is not None:
        recorded, dense = only_recorded["shape_spec"]["shapes"], only_recorded.get("dense_shapes") or {}
        pruned = {key: [(d, n) for d, n in enumerate(shape) if key not in dense or n != dense[key][d]]
                  for key, shape in recorded.items()}
        problems = [f"{key}: {shape} in {file}, {tuple(recorded[key])} recorded in {CONFIG_NAME}"
                    for key, (shape, file) in found.items() if key in pruned and (
                        len(shape) != len(recorded[key]) or any(shape[d] != n for d, n in pruned[key]))]
    else:
        problems = [f"{key}: {shape} in {file}, {expected[key]} recorded in {CONFIG_NAME}"
                    for key, (shape, file) in found.items() if key in expected and shape != expected[key]]
        saved = {alias for key in found for alias in aliases.get(key, (key,))}
        problems += [f"{key} is missing from the weights" for key in expected if key not in saved]
        problems += [f"{key} (in {file}) is not a tensor of {type(model).__name__}"
                     for key, (_, file) in found.items() if key not in expected]
    if problems:
        raise PrunedModelError(f"{source}: the weights do not match the model {CONFIG_NAME} describes: "
                               f"{listed(problems)}")
