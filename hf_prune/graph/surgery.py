"""Physical removal of pruned channels, and NNCF's zeroed-filter export format.

``strip`` slices every parameter and buffer along each dimension that a pruned channel space indexes,
sets grouped convolutions' ``groups`` from the kept groups, and refreshes every module's width
attributes, so the result is a smaller model of the same classes computing the same function.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .adapters import (
    WIDTH_LAYERS, Widths, feature_channels, feature_info_list, follow_input_width, int_attributes, probe_widths,
    refresh_attributes, refresh_model_widths, resize_attributes,
)
from . import multihead, reshapes
from .norms import refresh_weightless, weightless_width
from .spaces import SpaceTable
from .standardization import standardized_preimage
from .trace import ModelTrace


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    t = module._parameters.get(name)
    return t if t is not None else module._buffers.get(name)


def kept_indices(table: SpaceTable, labels, leaf_masks: dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
    """Per dimension: the kept positions, or None where everything is kept."""
    out: list[torch.Tensor | None] = []
    for lab in labels:
        keep = table.label_mask(lab, leaf_masks)
        out.append(None if bool(keep.all()) else keep.nonzero().squeeze(1))
    return out


@torch.no_grad()
def strip(model: nn.Module, trace: ModelTrace, leaf_masks: dict[int, torch.Tensor],
          dense_widths: Widths | None = None, every_view: bool = False) -> nn.Module:
    """Remove pruned channels from ``model`` in place and return it (model-level widths included).

    ``dense_widths``: :func:`.adapters.probe_widths` of ``model`` as it is now, where the caller has it
    (probed here otherwise). Reshapes whose code computes dense sizes are resized (:mod:`.reshapes`): those
    the strip check found (``trace.resized_views``), or with ``every_view`` every dimension of every view
    call (for the strip check: valid on the traced inputs only); numbers alike, pinned to the dense model's."""
    T = trace.table
    dense_widths = probe_widths(model) if dense_widths is None else dense_widths
    modules = dict(model.named_modules())
    for name, labels in trace.param_labels.items():
        module_name, _, attr = name.rpartition(".")
        module = modules[module_name]
        t = _tensor(module, attr)
        if t is None:
            continue
        new = t
        for d, idx in enumerate(kept_indices(T, labels, leaf_masks)):
            if idx is not None:
                new = new.index_select(d, idx.to(new.device))  # a new tensor: the dense one is left intact
        if new is t:  # nothing removed: the tensor stays as it is
            continue
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            module._buffers[attr] = new
    groups: dict[str, int] = {}
    for conv in trace.convs:
        if conv.groups_label is not None and conv.weight is not None:
            groups[conv.weight.rpartition(".")[0]] = int(T.label_mask(conv.groups_label, leaf_masks).sum())
    heads = multihead.head_counts(modules)
    for name, module in modules.items():
        refresh_attributes(module, groups.get(name))
    multihead.follow_head_counts(modules, heads)
    for record in trace.norms:
        refresh_weightless(modules[record.module], int(T.label_mask(record.label, leaf_masks).sum()))
    for name, labels in trace.input_widths.items():  # (reversed: where two dimensions are as wide, the first's)
        follow_input_width(modules[name], {T.label_size(lab): int(T.label_mask(lab, leaf_masks).sum())
                                           for lab in reversed(labels) if lab})
    clear_tensor_caches(model)
    for name, (sizes, unchanged) in _split_sizes(T, leaf_masks).items():
        if not isinstance(modules[name], WIDTH_LAYERS):  # those follow their tensors (refreshed above)
            resize_attributes(modules[name], sizes, unchanged)
    dims = None if every_view else trace.resized_views or {}
    reshapes.install(model, reshapes.stripped_views(T, trace.views, leaf_masks, dims),
                     reshapes.pinned_scalars(trace.scalars, dims))
    refresh_model_widths(model, dense_widths)
    return model


def clear_tensor_caches(model: nn.Module) -> None:
    """Empty every dict of tensors a module of ``model`` keeps outside its parameters and buffers: a cache of
    tensors derived from its parameters (timm's and transformers' LeViT keep their attention biases per
    device in eval mode), which the forward fills again from the current ones."""
    for module in model.modules():
        for name, value in vars(module).items():
            if not name.startswith("_") and isinstance(value, dict) and value \
                    and all(isinstance(v, torch.Tensor) for v in value.values()):
                value.clear()


def _split_sizes(T: SpaceTable, leaf_masks: dict[int, torch.Tensor]) -> dict[str, tuple[dict[int, int], set[int]]]:
    """Per module that splits pruned channels with a reshape (attention into heads) or into equal chunks: old
    size → new size of each split space and of its factors, and the sizes of factors that keep theirs."""
    out: dict[str, tuple[dict[int, int], set[int]]] = {}
    for leaf, mask in leaf_masks.items():
        if bool(mask.all()):
            continue
        for root, d in T.ancestors(leaf):
            if d is None or d.site.cause not in ("reshape", "split"):
                continue
            sizes, unchanged = out.setdefault(d.site.module, ({}, set()))
            for space in [root] + d.children:
                old, new = T.size(space), int(T.label_mask((space,), leaf_masks).sum())
                if new == old:
                    unchanged.add(old)
                else:
                    sizes[old] = new
    return out


@torch.no_grad()
def zero_pruned(model: nn.Module, trace: ModelTrace, leaf_masks: dict[int, torch.Tensor], inplace: bool = True,
                zero_norms: bool = True, standardized: bool = True) -> nn.Module:
    """Zero pruned filters, their norm parameters and consuming weights, keeping shapes (NNCF export).

    A weight standardized in forward gets its :func:`.standardization.standardized_preimage` instead, so that
    the zeroed model computes what the stripped one does; the result is final (masking or stripping it again
    is not exact). ``standardized=False`` leaves such weights as they are (for a model whose mask hooks stay).

    ``zero_norms=False`` leaves normalization layers' parameters alone (NNCF's ``prune_batch_norms``).

    With ``inplace=False`` the affected parameters are replaced by zeroed copies instead of being
    modified, so a model sharing its tensors with another (see :func:`shallow_copy`) leaves it intact.
    """
    T = trace.table
    modules = dict(model.named_modules())
    for name, labels in trace.param_labels.items():
        module_name, _, attr = name.rpartition(".")
        module = modules[module_name]
        p = module._parameters.get(attr)
        if p is None or (not zero_norms and isinstance(module, _NORMS)) or (not standardized and name in trace.standardized):
            continue
        mask = None
        for d, lab in enumerate(labels):
            keep = T.label_mask(lab, leaf_masks)
            if not bool(keep.all()):
                shape = [1] * p.dim()
                shape[d] = -1
                keep = keep.reshape(shape).to(device=p.device, dtype=p.dtype)
                mask = keep if mask is None else mask * keep
        if mask is None:
            continue
        eps = trace.standardized.get(name)
        new = p * mask if eps is None else standardized_preimage(p, mask, eps)
        if inplace:
            p.copy_(new)
        else:
            module._parameters[attr] = nn.Parameter(new, requires_grad=p.requires_grad)
    return model


def shallow_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer tensor with ``model``."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict and its non-persistent buffers, by name."""
    return {**model.state_dict(), **dict(model.named_buffers(remove_duplicate=False))}


def _recorded_tensors(model: nn.Module, reference: nn.Module | None) -> dict[str, torch.Tensor]:
    """``model``'s state dict, and its non-persistent buffers that are narrower than ``reference``'s (sliced by
    a strip, as timm BEiT's zero key bias with the heads: a reload must narrow them too; a cache the forward
    fills, as ConViT's ``rel_indices``, is not)."""
    state = model.state_dict()
    ref = all_tensors(reference) if reference is not None else {}
    for name, b in model.named_buffers(remove_duplicate=False):
        dense = ref.get(name)
        if name not in state and dense is not None and b.dim() == dense.dim() and b.shape != dense.shape \
                and all(n <= d for n, d in zip(b.shape, dense.shape)):
            state[name] = b
    return state


def shape_spec(model: nn.Module, reference: nn.Module | None = None) -> dict:
    """What a reload needs to rebuild a stripped model from its dense definition.

    Lists the shape of every parameter/buffer that differs from ``reference`` (the dense model; all
    of them when None), the ``groups`` of every convolution grouped in either and, given ``reference``, every
    integer attribute of other modules that differs from it (``num_heads`` of a module whose heads were pruned,
    a timm model's ``num_features``) and the ``feature_info`` channels of each timm model that differ from it.
    """
    ref = all_tensors(reference) if reference is not None else {}
    shapes = {
        name: list(t.shape) for name, t in _recorded_tensors(model, reference).items()
        if name not in ref or tuple(ref[name].shape) != tuple(t.shape)
    }
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    groups = {name: m.groups for name, m in model.named_modules()  # also a grouped conv left with one group
              if isinstance(m, nn.modules.conv._ConvNd) and max(m.groups, getattr(ref_modules.get(name), "groups", 1)) > 1}
    spec = {"shapes": shapes, "conv_groups": groups}
    if reference is not None:
        spec["attributes"] = _changed_attributes(model, reference)
        widths = {name: width for name, m in model.named_modules()
                  if (width := weightless_width(m)) is not None and width != weightless_width(ref_modules.get(name))}
        if widths:
            spec["weightless_norms"] = widths
        dense_channels = feature_channels(reference)
        changed = {path: channels for path, channels in feature_channels(model).items()
                   if dense_channels.get(path, channels) != channels}
        if changed:
            spec["feature_channels"] = changed
    resized, pinned = reshapes.installed(model), reshapes.installed_scalars(model)
    if resized:
        spec["reshapes"] = resized
    if pinned:
        spec["scalars"] = pinned
    return spec


def _changed_attributes(model: nn.Module, reference: nn.Module) -> dict[str, int]:
    """``module.attr`` → value for each integer attribute that ``reference`` also has, with another value
    (conv/linear/norm widths excluded: they follow the weights)."""
    ref_modules = dict(reference.named_modules())
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if name not in ref_modules or isinstance(m, WIDTH_LAYERS):
            continue
        ref = int_attributes(ref_modules[name])
        out |= {f"{name}.{attr}": v for attr, v in int_attributes(m).items() if attr in ref and ref[attr] != v}
    return out


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    """The module at ``name`` (any of its names where a module is shared), or None."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


@torch.no_grad()
def resize_to_spec(model: nn.Module, spec: dict) -> nn.Module:
    """Narrow a freshly built dense model to a :func:`shape_spec` (values are placeholders, to be
    overwritten by loading the stripped weights); refreshes module attributes like ``strip``."""
    modules = dict(model.named_modules())
    for name, shape in spec["shapes"].items():
        module_name, _, attr = name.rpartition(".")
        module = _submodule(model, module_name)  # also a shared module's second name (CoaT's mlp3 is its mlp2)
        t = _tensor(module, attr) if module is not None else None
        if t is None:
            raise KeyError(f"{name}: recorded in the shape spec but not a parameter or buffer of {type(model).__name__}")
        if len(shape) != t.dim() or any(n > m for n, m in zip(shape, t.shape)):
            raise ValueError(f"{name}: recorded shape {tuple(shape)} does not fit the model's {tuple(t.shape)}")
        new = t
        for d, n in enumerate(shape):
            new = new.narrow(d, 0, n)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(new.clone(), requires_grad=t.requires_grad)
        else:
            module._buffers[attr] = new.clone()
    groups = spec.get("conv_groups", {})
    for name, module in modules.items():
        refresh_attributes(module, groups.get(name))
    for key, value in spec.get("attributes", {}).items():
        module_name, _, attr = key.rpartition(".")
        module = _submodule(model, module_name)
        if module is None or attr not in int_attributes(module):
            raise KeyError(f"{key}: recorded in the shape spec but not an integer attribute of {type(model).__name__}")
        setattr(module, attr, value)
    for name, width in spec.get("weightless_norms", {}).items():
        module = _submodule(model, name)
        if weightless_width(module) is None:
            raise KeyError(f"{name}: recorded in the shape spec as a norm without weight, which {type(model).__name__} "
                           "does not have")
        refresh_weightless(module, int(width))
    for path, channels in spec.get("feature_channels", {}).items():
        entries = feature_info_list(modules[path]) if path in modules else []
        if len(entries) != len(channels):
            raise KeyError(f"{path or type(model).__name__}.feature_info: {len(channels)} entries recorded in the "
                           f"shape spec, the model has {len(entries)}")
        for entry, n in zip(entries, channels):
            entry["num_chs"] = n
    reshapes.install(model, spec.get("reshapes", {}), spec.get("scalars", {}))
    return model
