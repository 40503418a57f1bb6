"""The pruning record: what a stripped model carries so that a reload rebuilds it from its config.

A stripped model differs from the architecture its config describes only in tensor widths, conv
``groups`` and a few integer attributes. The record states that difference against the dense model the
config builds (:func:`~hf_prune.graph.surgery.shape_spec`)::

    {"quant_method": "hf_prune", "format_version": 1, "shape_spec": {...}, "dense_shapes": {...},
     "dense_config": {...}, "stripped_config": {...}, "pruning": {...} | null}

- transformers: under ``config.quantization_config`` (in memory and in config.json), where transformers'
  quantizer hook finds it (:mod:`hf_prune.integrations.loader`). ``dense_shapes`` (the unpruned shapes of
  the recorded tensors) tells which dimensions were pruned, so that a reload with another head narrows
  only those. The config's width fields that one value still describes hold the stripped widths
  (:mod:`.config_widths`); ``dense_config`` keeps their dense values, from which :func:`dense_reference`
  builds the dense architecture, and ``stripped_config`` the stripped ones, set again after a reload (a
  config may derive a field in its constructor: transformers 4's Swin ``hidden_size``).
- timm: as ``model.hf_prune_record`` in memory, under ``hf_prune`` in timm's config.json.

:meth:`FilterPruningController.strip_model <hf_prune.algorithm.controller.FilterPruningController.strip_model>`
calls :func:`record_strip`, so a model stripped by any path carries its record; saving refreshes it.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PrunedModelError
from ..model_kind import library_of
from .config_widths import build, get_fields, replayed_spec, set_fields, stripped_fields
from .surgery import all_tensors, resize_to_spec, shape_spec

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "dense_config", "dense_reference", "check_record", "is_timm_config", "listed",
    "model_library", "narrow", "pruning_record", "record_shapes", "record_strip", "saved_record", "set_record",
]

FORMAT_VERSION = 1
QUANT_METHOD = "hf_prune"
TIMM_KEY = "hf_prune"
"""Key of the pruning record in a timm config.json."""
TIMM_ATTR = "hf_prune_record"
"""Attribute holding the pruning record of a timm model in memory."""
CONFIG_NAME = "config.json"
MAX_LISTED = 5
"""Mismatches named in an error before the rest are counted."""


def model_library(model: nn.Module) -> str:
    """``"transformers"`` or ``"timm"``; anything else raises :class:`PrunedModelError`."""
    library = library_of(model)
    if library is not None:
        return library
    raise PrunedModelError(f"{type(model).__name__} is neither a transformers PreTrainedModel nor a timm model: "
                           "hf_prune saves and loads only those")


def pruning_record(model: nn.Module) -> dict[str, Any] | None:
    """The pruning record ``model`` carries (from its last strip, save or load), or None."""
    if library_of(model) == "transformers":
        record = getattr(model.config, "quantization_config", None)
        if record is not None and not isinstance(record, dict):
            record = record.to_dict()  # a QuantizationConfigMixin
        return record if isinstance(record, dict) and record.get("quant_method") == QUANT_METHOD else None
    return getattr(model, TIMM_ATTR, None)


def set_record(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Attach ``record`` to ``model`` (transformers: its config; timm: an attribute), or remove it (None)."""
    if library_of(model) == "transformers":
        if record is not None:
            model.config.quantization_config = record
        elif pruning_record(model) is not None:
            del model.config.quantization_config
    elif record is not None:
        setattr(model, TIMM_ATTR, record)
    else:
        model.__dict__.pop(TIMM_ATTR, None)


def dense_config(model: nn.Module) -> Any:
    """A copy of a transformers ``model``'s config describing its dense architecture: without the pruning
    record, with the width fields the strip changed set back (the record's ``dense_config``)."""
    config = copy.deepcopy(model.config)
    record = pruning_record(model)
    if record is not None:
        del config.quantization_config
        set_fields(config, record.get("dense_config") or {})
    return config


def dense_reference(model: nn.Module, model_args: dict[str, Any] | None = None) -> nn.Module:
    """The unpruned model that ``model``'s config describes, on the meta device (shapes only).

    ``model_args``: timm constructor arguments the timm factory did not record.
    """
    if model_library(model) == "transformers":
        return build(type(model), dense_config(model))
    import timm
    from timm.models._input import get_model_args

    with torch.device("meta"):
        return timm.create_model(model.pretrained_cfg["architecture"], **get_model_args(model, model_args))


def _make_record(model: nn.Module, pruning: dict[str, Any] | None,
                 model_args: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The record of ``model``'s shapes (None if it has its config's shapes; checks a reload can rebuild
    it), and the config width fields that take stripped values (:func:`~.config_widths.stripped_fields`),
    whose dense values the record keeps under ``dense_config``."""
    dense = dense_reference(model, model_args)
    spec = shape_spec(model, dense)
    if not spec["shapes"]:
        return None, {}
    dense_state = all_tensors(dense)
    dense_shapes = {name: list(dense_state[name].shape) for name in spec["shapes"] if name in dense_state}
    try:
        resize_to_spec(dense, spec)
    except (KeyError, ValueError) as exc:
        raise PrunedModelError(f"{type(model).__name__} cannot be rebuilt from its config ({exc.args[0]}); for a "
                               "timm model, pass the constructor arguments as model_args") from None
    missing = sorted(set(dense.state_dict()) - set(model.state_dict()))
    if missing:
        raise PrunedModelError(f"{type(model).__name__} lacks tensors its config builds: {listed(missing)}")
    fields, dense_fields = {}, {}
    if model_library(model) == "transformers":
        config = dense_config(model)
        fields = stripped_fields(model, config, spec)
        dense_fields = get_fields(config, list(fields))
        spec = replayed_spec(model, set_fields(config, fields), spec)
    record = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "shape_spec": spec,
              "dense_shapes": dense_shapes, "dense_config": dense_fields, "stripped_config": fields, "pruning": pruning}
    return record, fields


def record_shapes(model: nn.Module, pruning: dict[str, Any] | None, model_args: dict[str, Any] | None = None) -> None:
    """Attach the record of ``model``'s shapes (:func:`_make_record`) and, for a transformers model, set its
    config's width fields to the stripped widths they describe."""
    record, fields = _make_record(model, pruning, model_args)
    if model_library(model) == "transformers":
        set_fields(model.config, (pruning_record(model) or {}).get("dense_config") or {})
        set_fields(model.config, fields)
    set_record(model, record)


def record_strip(model: nn.Module, pruning: dict[str, Any]) -> None:
    """Attach the record of a model just stripped (``pruning``: its controller's summary), so that
    transformers' own ``save_pretrained`` writes the new shapes. A model a reload could not rebuild is
    only warned about: stripping itself must not fail for that."""
    if library_of(model) is None:
        return
    try:
        record_shapes(model, pruning)
    except PrunedModelError as exc:
        warnings.warn(f"the stripped model's shapes cannot be recorded for a reload: {exc}", UserWarning, stacklevel=3)


def check_record(record: Any, source: Path) -> None:
    """A record this version of hf_prune can read, or a :class:`PrunedModelError` naming ``source``."""
    if not isinstance(record, dict):
        raise PrunedModelError(f"{source}: the hf_prune record must be a mapping, got {record!r}")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise PrunedModelError(f"{source}: hf_prune format_version {version!r} is not supported (this hf_prune "
                               f"reads version {FORMAT_VERSION}); upgrade hf_prune")
    if not isinstance(record.get("shape_spec"), dict) or "shapes" not in record["shape_spec"]:
        raise PrunedModelError(f"{source}: the hf_prune record has no shape_spec")


def _fitted_spec(model: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """``record``'s shape spec with every unpruned dimension taken from ``model`` (a new head's width, say).

    Records without ``dense_shapes`` (hf_prune 0.1 before it was added) are taken as they are.
    """
    spec, dense_shapes = record["shape_spec"], record.get("dense_shapes")
    if not isinstance(dense_shapes, dict):
        return spec
    state = all_tensors(model)
    shapes = {}
    for name, shape in spec["shapes"].items():
        current, dense = state.get(name), dense_shapes.get(name)
        if current is None or dense is None or not len(dense) == len(shape) == current.dim():
            shapes[name] = shape
        else:
            shapes[name] = [n if n != d else c for n, d, c in zip(shape, dense, current.shape)]
    return {**spec, "shapes": shapes}


def narrow(model: nn.Module, record: dict[str, Any], source: Path) -> None:
    """Narrow a freshly built dense model to the shapes ``record`` (read from ``source``) describes."""
    check_record(record, source)
    try:
        resize_to_spec(model, _fitted_spec(model, record))
    except (KeyError, ValueError) as exc:
        raise PrunedModelError(f"{source}: the recorded shapes do not fit {type(model).__name__} (a config of a "
                               f"different architecture?): {exc.args[0]}") from None


def is_timm_config(config: dict[str, Any]) -> bool:
    """timm's Hub config (transformers' ``TimmWrapperConfig`` also has ``architecture``, and a ``model_type``)."""
    return "architecture" in config and "model_type" not in config


def saved_record(config: dict[str, Any]) -> Any:
    """The pruning record in a parsed config.json (transformers or timm), or None."""
    if is_timm_config(config):
        return config.get(TIMM_KEY)
    quantization = config.get("quantization_config")
    return quantization if isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD else None


def listed(items: list[str]) -> str:
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more
