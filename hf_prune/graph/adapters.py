"""Module attributes that must follow their (sliced) weights.

Conv/linear/norm layers are refreshed from their parameter shapes. Any other module that splits channels
with a reshape (attention into heads) keeps its widths in plain integer attributes (``num_heads``,
``head_dim``, ``all_head_size``, ``attn_dim``, ...); :func:`resize_attributes` sets every integer attribute
equal to an old size of a split space to the new size, whatever the class calls it.
"""

from __future__ import annotations

from typing import Collection, Mapping

from torch import nn

WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
"""Layers whose width attributes :func:`refresh_attributes` derives from their weights."""

_PER_HEAD_WORDS = ("dim", "size", "width")


def refresh_attributes(module: nn.Module, groups: int | None = None) -> None:
    """Set a conv/linear/norm layer's width attributes from its current parameter shapes."""
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
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.GroupNorm):
        if module.weight is not None:
            per_group = module.num_channels // module.num_groups
            module.num_channels = module.weight.shape[0]
            module.num_groups = module.num_channels // per_group
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)


def int_attributes(module: nn.Module) -> dict[str, int]:
    """The plain integer attributes of a module (its own, not its children's)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and type(v) is int}


def resize_attributes(module: nn.Module, sizes: Mapping[int, int], unchanged: Collection[int] = ()) -> None:
    """Set each integer attribute of ``module`` whose value is an old size in ``sizes`` to the new size.

    ``unchanged`` are sizes of split factors that keep their size (the per-head width): where one equals a
    changed size (4 heads of width 4), attributes named like a width (``head_dim``, ``head_size``) keep it.
    """
    for name, value in int_attributes(module).items():
        new = sizes.get(value)
        if new is None or new == value:
            continue
        if value in unchanged and any(w in name for w in _PER_HEAD_WORDS):
            continue
        setattr(module, name, new)
