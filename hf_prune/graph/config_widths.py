"""The width fields of a stripped transformers model's config, made to tell the truth.

A field such as EfficientNet's ``hidden_dim``, an element of ResNet's ``hidden_sizes`` or ViT's
``intermediate_size`` takes the stripped width when one value still describes the model: every tensor
dimension the field sets (found by building the dense architecture with the field doubled, on the meta
device) shrank by the same factor in the stripped model, and the architecture built from the new value,
narrowed by the shape spec, is the stripped model (a field that no layer reads, such as Swin's
``hidden_size``, takes the one width that every dimension of its dense size shrank to) (integer attributes that the field also sets but that
kept their value, such as the pooling kernel EfficientNet sizes from ``hidden_dim``, are replayed, and float
attributes such as attention's ``scaling`` must come out the same). Other fields keep their dense value (ViT's
``num_attention_heads`` after head pruning, ViT's ``hidden_size`` when its heads shrank too: the per-head width
is derived from them).
The dense values go into the pruning record (``dense_config``), from which the dense reference is built.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from .adapters import int_attributes
from .surgery import resize_to_spec, shape_spec

__all__ = ["WIDTH_FIELDS", "build", "get_fields", "replayed_spec", "set_fields", "stripped_fields"]

WIDTH_FIELDS = ("embedding_size", "embed_dim", "hidden_size", "hidden_sizes", "hidden_dim", "intermediate_size",
                "neck_hidden_sizes")
"""Config fields that record a width (an int, or one int per stage)."""
Fields = dict[str, Any]
"""Dotted config path (``hidden_dim``, ``vision_config.hidden_size``) → value."""


def _configs(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``config`` and its sub-configs (CLIP's ``vision_config``, ...), with their path prefixes."""
    from transformers import PretrainedConfig

    subs = [(f"{prefix}{name}.", value) for name, value in vars(config).items() if isinstance(value, PretrainedConfig)]
    return [(prefix, config), *[c for p, sub in subs for c in _configs(sub, p)]]


def _width_fields(config: Any) -> Fields:
    fields = {}
    for prefix, cfg in _configs(config):
        for name in WIDTH_FIELDS:
            value = vars(cfg).get(name)
            if type(value) is int or (isinstance(value, (list, tuple)) and value and all(type(v) is int for v in value)):
                fields[prefix + name] = value
    return fields


def set_fields(config: Any, fields: Fields) -> Any:
    """Set ``fields`` in ``config`` (in place) and return it."""
    for path, value in fields.items():
        *parents, name = path.split(".")
        target = config
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, copy.deepcopy(value))
    return config


def get_fields(config: Any, paths: list[str]) -> Fields:
    """The values of ``paths`` in ``config``."""
    values = {}
    for path in paths:
        target = config
        for name in path.split("."):
            target = getattr(target, name)
        values[path] = list(target) if isinstance(target, tuple) else copy.deepcopy(target)  # as JSON has it
    return values


def build(model_class: type[nn.Module], config: Any) -> nn.Module:
    """``model_class(config)`` on the meta device (shapes only)."""
    with torch.device("meta"):
        return model_class(config)


def _observables(model: nn.Module) -> dict[str, int]:
    """Every tensor dimension and integer module attribute of ``model``, by name."""
    values = {f"{name}#{d}": n for name, t in model.state_dict().items() for d, n in enumerate(t.shape)}
    values |= {f"{name}.{attr}": v for name, m in model.named_modules() for attr, v in int_attributes(m).items()}
    return values


def _scaled(model_class: type[nn.Module], config: Any, path: str, index: int | None, dense: dict[str, int],
            stripped: dict[str, int]) -> int | None:
    """The stripped value of ``path`` (element ``index`` of a list), if every quantity it sets scaled alike."""
    value = _width_fields(config)[path]
    old = value if index is None else value[index]
    probe_value = 2 * old if index is None else [2 * v if i == index else v for i, v in enumerate(value)]
    try:
        probe = _observables(build(model_class, set_fields(copy.deepcopy(config), {path: probe_value})))
    except Exception:  # noqa: BLE001 - an architecture that cannot take the probe value is left alone
        return None
    if probe.keys() != dense.keys():
        return None
    if probe == dense:  # a field no layer reads (Swin's hidden_size, the last stage's width): the one new width
        news = {stripped[key] for key, n in dense.items() if "#" in key and n == old}  # of that size, if one
        return news.pop() if len(news) == 1 and old not in news else None
    ratios = set()
    for key, n in dense.items():
        if probe[key] == n or "#" not in key:  # integer attributes (a pooling kernel) are replayed by the spec
            continue
        if probe[key] != 2 * n:  # not proportional to the field (a per-head width derived from a head count)
            return None
        ratios.add(Fraction(stripped[key], n))
    if len(ratios) != 1:
        return None
    new = old * ratios.pop()
    return int(new) if new.denominator == 1 and new != old else None


def stripped_fields(model: nn.Module, dense_config: Any, spec: dict[str, Any]) -> Fields:
    """The width fields of ``dense_config`` that take a new value for the stripped ``model``, with that value.

    ``spec``: ``model``'s shape spec against the architecture ``dense_config`` builds.
    """
    model_class = type(model)
    dense = _observables(build(model_class, dense_config))
    stripped = _observables(model)
    if not dense.keys() <= stripped.keys():
        return {}
    stripped = {key: stripped[key] for key in dense}  # not attributes set after construction
    fields = _width_fields(dense_config)
    changed = {n for key, n in dense.items() if "#" in key and stripped[key] != n}
    picks = [(path, index, new) for path, value in fields.items()
             for index in (range(len(value)) if isinstance(value, (list, tuple)) else [None])
             if (value if index is None else value[index]) in changed  # no pruned dimension has its width: unprobed
             and (new := _scaled(model_class, dense_config, path, index, dense, stripped)) is not None]
    units = [[pick, *(_head_counts(model, dense_config, pick[0]) if pick[0].endswith("hidden_size") else [])]
             for pick in picks]  # a hidden_size goes with its config's head count, if every module agrees on one
    picks = [pick for unit in units for pick in unit]
    if _rebuilds(model, dense_config, _picked(fields, picks), spec, stripped):
        return _picked(fields, picks)
    accepted: list[tuple[str, int | None, int]] = []
    for unit in units:  # some do not go together: take them one by one (a hidden_size with or without heads)
        for tried in ([*unit], unit[:1]) if len(unit) > 1 else ([*unit],):
            if _rebuilds(model, dense_config, _picked(fields, [*accepted, *tried]), spec, stripped):
                accepted.extend(tried)
                break
    return _picked(fields, accepted)


HEAD_COUNT_FIELDS = ("num_attention_heads", "num_heads")
"""Config fields that count attention heads; the per-head width is derived as ``hidden_size // heads``."""


def _head_counts(model: nn.Module, dense_config: Any, hidden_size: str) -> list[tuple[str, None, int]]:
    """The head-count field beside the ``hidden_size`` field at path ``hidden_size``, with the number of heads
    every attention module of ``model`` now has (none if they differ): ViT's per-head width is
    ``hidden_size // num_attention_heads``, so the two describe a model with pruned heads only together."""
    counts = {v for m in model.modules() for attr, v in int_attributes(m).items() if attr in HEAD_COUNT_FIELDS}
    prefix = hidden_size.removesuffix("hidden_size")
    cfg = dict(_configs(dense_config)).get(prefix)
    if len(counts) != 1 or cfg is None:
        return []
    count = counts.pop()
    return [(prefix + name, None, count) for name in HEAD_COUNT_FIELDS
            if type(vars(cfg).get(name)) is int and vars(cfg)[name] != count]


def _picked(fields: Fields, picks: list[tuple[str, int | None, int]]) -> Fields:
    """``fields`` with the new values of ``picks`` (path, list index or None, value), only the fields picked."""
    out: Fields = {}
    for path, index, new in picks:
        if index is None or path not in fields:
            out[path] = new
        else:
            out.setdefault(path, list(fields[path]))[index] = new
    return out


def replayed_spec(model: nn.Module, config: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (against the dense architecture) plus the integer attributes in which the architecture
    ``config`` builds differs from ``model``: what a reload from ``config`` replays."""
    attributes = shape_spec(model, build(type(model), config))["attributes"]
    return {**spec, "attributes": {**attributes, **spec.get("attributes", {})}}


def _rebuilds(model: nn.Module, dense_config: Any, fields: Fields, spec: dict[str, Any],
              stripped: dict[str, int]) -> bool:
    """Whether the architecture ``dense_config`` with ``fields`` builds, narrowed by ``spec``, has the
    stripped model's shapes."""
    if not fields:
        return True
    config = set_fields(copy.deepcopy(dense_config), fields)
    try:
        type(config).from_dict(config.to_dict())  # what a reload does: the config's own checks run
        rebuilt = resize_to_spec(build(type(model), config), replayed_spec(model, config, spec))
    except Exception:  # noqa: BLE001 - a config these values break (any check of any transformers release)
        return False
    return _observables(rebuilt) == stripped and _float_attributes(rebuilt) == _float_attributes(model)


def _float_attributes(model: nn.Module) -> dict[str, float]:
    """Float module attributes a config derives (attention's ``scaling`` from the per-head width): a field whose
    new value changes one (ViT's ``hidden_size`` after its heads and embedding both shrank) keeps its dense value."""
    return {f"{name}.{attr}": v for name, m in model.named_modules() for attr, v in vars(m).items()
            if type(v) is float and not attr.startswith("_")}
