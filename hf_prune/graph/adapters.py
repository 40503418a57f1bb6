"""Module adapters: the width attributes of modules, kept in sync with their (sliced) weights.

Conv/linear/norm layers are handled generically. Attention modules split their projections into heads
with a reshape; an adapter for such a class tells the analysis which split is the head count (so the
head group may be pruned) and refreshes ``num_heads``-style attributes after a strip. Reshape splits in
modules without an adapter are never pruned, so a strip can never leave a stale attribute behind.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

AttentionAdapter = tuple[Callable[[nn.Module], int], Callable[[nn.Module], None]]
"""(number of heads of the module, refresh its attributes from its current weights)."""


def _timm_heads(m: nn.Module) -> int:
    return m.num_heads


def _timm_update(m: nn.Module) -> None:
    m.num_heads = m.qkv.out_features // (3 * m.head_dim)
    m.attn_dim = m.num_heads * m.head_dim


def _hf_heads(m: nn.Module) -> int:
    return m.num_attention_heads


def _hf_update(m: nn.Module) -> None:
    m.num_attention_heads = m.query.out_features // m.attention_head_size
    m.all_head_size = m.num_attention_heads * m.attention_head_size


ATTENTION_ADAPTERS: dict[str, AttentionAdapter] = {
    "timm.layers.attention.Attention": (_timm_heads, _timm_update),
    "timm.models.vision_transformer.Attention": (_timm_heads, _timm_update),
    "transformers.models.vit.modeling_vit.ViTSelfAttention": (_hf_heads, _hf_update),
    "transformers.models.deit.modeling_deit.DeiTSelfAttention": (_hf_heads, _hf_update),
}


def class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def attention_adapter(module: nn.Module) -> AttentionAdapter | None:
    return ATTENTION_ADAPTERS.get(class_path(module))


def refresh_attributes(module: nn.Module, groups: int | None = None) -> None:
    """Set a module's width attributes from its current parameter shapes."""
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
    adapter = attention_adapter(module)
    if adapter is not None:
        adapter[1](module)
