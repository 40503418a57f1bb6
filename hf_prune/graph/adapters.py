"""Module attributes that must follow their (sliced) weights.

Conv/linear/norm layers are refreshed from their parameter shapes. Any other module that splits channels
with a reshape (attention into heads) keeps its widths in plain integer attributes (``num_heads``,
``head_dim``, ``all_head_size``, ``attn_dim``, ...); :func:`resize_attributes` sets every integer attribute
equal to an old size of a split space to the new size, whatever the class calls it.

A timm model also records widths at model level (``num_features``, ``head_hidden_size``, ``embed_dim``,
``feature_info`` channels, which ``reset_classifier`` and feature extraction read):
:func:`refresh_model_widths` sets them from a probe pass before and after the strip.
"""

from __future__ import annotations

import warnings
from typing import Collection, Mapping

import torch
from torch import nn

from ..model_kind import library_of
from . import multihead

WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                nn.Embedding, nn.MultiheadAttention)
"""Layers whose width attributes :func:`refresh_attributes` derives from their weights."""

_PER_HEAD_WORDS = ("dim", "size", "width")
_WIDTH_WORDS = ("head", "dim", "size", "width", "channel", "feature", "hidden", "embed", "proj")
"""Words naming the integer attributes that can hold a width or a head count (``num_heads``,
``all_head_size``, ``attn_dim``, ``out_dim_projection``, ``embed_dim``)."""
_NOT_WIDTHS = ("ratio", "patch")
"""Words naming integer attributes that are never a width, whatever else the name says."""


def refresh_attributes(module: nn.Module, groups: int | None = None) -> None:
    """Set a conv/linear/norm/attention layer's width attributes (a norm's ``normalized_shape``) from its
    current parameter shapes (``nn.MultiheadAttention`` and the torch layers around it: :func:`.multihead.refresh`)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if groups is not None:
            module.groups = groups
        if module.transposed:  # weight (in, out / groups, ...)
            module.in_channels, module.out_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
        else:
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        multihead.refresh(module)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.GroupNorm):
        if module.weight is not None:
            per_group = module.num_channels // module.num_groups
            module.num_channels = module.weight.shape[0]
            if module.num_groups > 1:  # whole groups pruned; one group keeps normalizing every channel
                module.num_groups = module.num_channels // per_group
    elif isinstance(getattr(module, "normalized_shape", None), tuple):  # LayerNorm, RMSNorm (torch's, timm's)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == len(module.normalized_shape):
            module.normalized_shape = tuple(weight.shape)


INPUT_WIDTHS = ("num_channels",)
"""Integer attributes that a module's code compares with its input's width: transformers' patch embeddings
check ``num_channels`` ("Make sure that the channel dimension of the pixel values match ..."), and FocalNet's
downsampling layers are patch embeddings of the residual stream. The strip sets them to the input's kept width."""


def input_width_attributes(module: nn.Module) -> list[str]:
    """The :data:`INPUT_WIDTHS` attributes ``module`` has (none for a layer that follows its weights)."""
    if isinstance(module, WIDTH_LAYERS):
        return []
    return [name for name in INPUT_WIDTHS if type(getattr(module, name, None)) is int]


def follow_input_width(module: nn.Module, widths: Mapping[int, int]) -> None:
    """Set ``module``'s :data:`INPUT_WIDTHS` attributes holding a dense input width (a key of ``widths``) to the
    kept width."""
    for name in input_width_attributes(module):
        new = widths.get(getattr(module, name))
        if new is not None:
            setattr(module, name, new)


def int_attributes(module: nn.Module) -> dict[str, int]:
    """The plain integer attributes of a module (its own, not its children's)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and type(v) is int}


def resize_attributes(module: nn.Module, sizes: Mapping[int, int], unchanged: Collection[int] = ()) -> None:
    """Set each integer attribute of ``module`` whose value is an old size in ``sizes`` to the new size.

    ``unchanged`` are sizes of split factors that keep their size (the per-head width): where one equals a
    changed size (4 heads of width 4), attributes named like a width (``head_dim``, ``head_size``) keep it.
    Only attributes named like a width or a head count are set (:func:`is_width_name`).
    """
    for name, value in int_attributes(module).items():
        new = sizes.get(value)
        if new is None or new == value or not is_width_name(name):
            continue
        if value in unchanged and any(w in name for w in _PER_HEAD_WORDS):
            continue
        setattr(module, name, new)


def is_width_name(name: str) -> bool:
    """Whether an integer attribute's name says it can hold a width or a head count: LeViT's ``len_points``
    (4 positions) and ``attention_ratio`` (2) are neither, even where they equal the old head count."""
    name = name.lower()
    return any(w in name for w in _WIDTH_WORDS) and not any(w in name for w in _NOT_WIDTHS)


# ------------------------------------------------------------------------------------- model-level widths
MODEL_WIDTHS = ("num_features", "head_hidden_size", "embed_dim")
"""timm model attributes recording a width: the output width of ``forward_features`` (``num_features``,
``embed_dim`` where it is the residual width) and of ``forward_head(pre_logits=True)`` (``head_hidden_size``)."""
_SOURCE = {"num_features": "features", "embed_dim": "features", "head_hidden_size": "pre_logits"}

Widths = dict[str, dict[str, tuple[int, ...]]]
"""Per timm model (by module path): output shapes of ``features``, ``pre_logits`` and each ``feature_info`` module."""


def is_timm_model(module: nn.Module) -> bool:
    """A timm model (:func:`hf_prune.model_kind.library_of`) with timm's feature API (``forward_features``)."""
    return library_of(module) == "timm" and hasattr(module, "forward_features")


def feature_info_list(model: nn.Module) -> list[dict]:
    """timm's ``feature_info`` entries (a list of dicts, or a ``FeatureInfo``'s), [] where there is none."""
    info = getattr(model, "feature_info", None)
    info = getattr(info, "info", info)
    return [e for e in info if isinstance(e, dict) and "num_chs" in e] if isinstance(info, list) else []


def _first_tensor(output: object) -> torch.Tensor | None:
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


@torch.no_grad()
def probe_widths(model: nn.Module, warn: bool = True) -> Widths:
    """One batch-1 pass through every timm model inside ``model`` (``model`` itself included) recording the
    shapes its width attributes describe. A model the probe cannot run is left out (with a warning if ``warn``)."""
    out: Widths = {}
    for path, m in model.named_modules():
        if is_timm_model(m):
            try:
                out[path] = _probe(m)
            except Exception as exc:  # noqa: BLE001 - a model-level attribute must not make the strip fail
                if warn:
                    warnings.warn(f"{path or type(m).__name__}: its model-level widths (num_features, feature_info) "
                                  f"cannot be probed and are left as they are: {type(exc).__name__}: {exc}",
                                  UserWarning, stacklevel=3)
    return out


def _probe(model: nn.Module) -> dict[str, tuple[int, ...]]:
    from timm.models._input import get_model_input_config

    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def store(key: str):
        def hook(_mod, _args, output):
            t = _first_tensor(output)
            if t is not None:
                shapes.setdefault(key, tuple(t.shape))
        return hook

    ref = next(model.parameters(), None)
    x = torch.zeros(1, *get_model_input_config(model)["input_size"], device=None if ref is None else ref.device,
                    dtype=None if ref is None else ref.dtype)
    hooks = [modules[e["module"]].register_forward_hook(store(e["module"]))
             for e in feature_info_list(model) if e.get("module") in modules]
    was_training = model.training
    try:
        model.eval()
        features = model.forward_features(x)
        shapes["features"] = tuple(_first_tensor(features).shape)
        if hasattr(model, "forward_head"):
            shapes["pre_logits"] = tuple(_first_tensor(model.forward_head(features, pre_logits=True)).shape)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _new_width(value: int, dense: tuple[int, ...] | None, new: tuple[int, ...] | None) -> int:
    """The new size of the dimension that had size ``value`` and changed (a stripped channel dimension);
    ``value`` where none did, or where the answer is ambiguous."""
    if dense is None or new is None or len(dense) != len(new):
        return value
    changed = {n for d, n in zip(dense, new) if d == value and n != d}
    return changed.pop() if len(changed) == 1 else value


def refresh_model_widths(model: nn.Module, dense: Widths) -> None:
    """Set the width attributes and ``feature_info`` channels of every timm model inside ``model`` from its
    current layers, given :func:`probe_widths` of the model before its channels were removed. A model that
    no longer runs is left as it is (the strip's verification says why)."""
    modules = dict(model.named_modules())
    for path, new in probe_widths(model, warn=False).items():
        m, old = modules[path], dense.get(path, {})
        for attr in MODEL_WIDTHS:
            value = getattr(m, attr, None)
            if type(value) is int:
                setattr(m, attr, _new_width(value, old.get(_SOURCE[attr]), new.get(_SOURCE[attr])))
        for head in _head_modules(m):  # a head module keeping its own widths (MambaOut's MlpHead)
            for attr, value in int_attributes(head).items():
                if attr != "num_classes":
                    width = _new_width(value, old.get("pre_logits"), new.get("pre_logits"))
                    if width == value:
                        width = _new_width(value, old.get("features"), new.get("features"))
                    setattr(head, attr, width)
        for entry in feature_info_list(m):
            entry["num_chs"] = _new_width(entry["num_chs"], old.get(entry.get("module")), new.get(entry.get("module")))


def _head_modules(model: nn.Module) -> list[nn.Module]:
    """The modules between a timm model and its classifier (``get_classifier()``), layers excepted."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((n for n, c in model.named_modules() if c is classifier), "") if isinstance(classifier, nn.Module) else ""
    parts = name.split(".")[:-1]
    modules = dict(model.named_modules())
    heads = [modules[".".join(parts[:i])] for i in range(1, len(parts) + 1)]
    return [h for h in heads if not isinstance(h, WIDTH_LAYERS)]


def feature_channels(model: nn.Module) -> dict[str, list[int]]:
    """``feature_info`` channels of every timm model inside ``model``, by module path."""
    return {path: [e["num_chs"] for e in feature_info_list(m)] for path, m in model.named_modules()
            if is_timm_model(m) and feature_info_list(m)}
