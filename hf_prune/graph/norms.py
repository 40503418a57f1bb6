"""Normalizations over channels (LayerNorm, RMSNorm, GRN, GroupNorm with one group), pruned exactly.

A normalization whose statistics are taken over a channel dimension (a transformer's residual stream under
LayerNorm, ConvNeXt-V2's MLP under GRN) mixes channels: a pruned channel that still carries values would
change the statistics of the kept ones. Such a channel space is prunable when the statistics are computed
by a *known normalization module* (a class :func:`norm_kind` recognizes, with a ``weight`` indexed by the
channels): the trace records the module and the dimension of its input that holds the channels
(:class:`NormRecord`), and while masks are active :class:`NormMaskHook` replaces the module's output by the
same normalization computed over the kept channels only. The masked model then computes what the stripped
model (whose norm simply has fewer channels) will; the strip proof (:mod:`.verify`) checks it.

A GroupNorm with one group (PoolFormer's) takes its statistics over the channels and positions together; with
more groups its whole groups are pruned (no statistics change), which the trace decides.

A LayerNorm or RMSNorm without weight (``elementwise_affine=False``) is recognized by its type, its channels
being the dimension it normalizes; the strip sets its ``normalized_shape`` (:func:`refresh_weightless`).
Statistics over channels computed anywhere else (a functional ``layer_norm`` in a larger module) keep blocking
the space, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .spaces import Label, SpaceTable

NormFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _shaped(p: torch.Tensor | None, x: torch.Tensor, dim: int) -> torch.Tensor | None:
    """A per-channel parameter viewed to broadcast along ``dim`` of ``x``."""
    if p is None:
        return None
    view = [1] * x.dim()
    view[dim] = -1
    return p.reshape(view).to(x.dtype)


def _mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return (x * mask).sum(dim, keepdim=True) / mask.sum()


def _eps(module: nn.Module, x: torch.Tensor, default: float) -> float:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", default))
    return torch.finfo(x.dtype).eps if eps is None else float(eps)


def layer_norm(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """LayerNorm over the kept channels (``mask`` 1) of ``dim``; affine as the module's."""
    mean = _mean(x, mask, dim)
    centred = x - mean
    y = centred * torch.rsqrt(_mean(centred * centred, mask, dim) + _eps(module, x, 1e-5))
    w, b = _shaped(module.weight, y, dim), _shaped(getattr(module, "bias", None), y, dim)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def rms_norm(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """RMSNorm over the kept channels of ``dim``."""
    y = x * torch.rsqrt(_mean(x * x, mask, dim) + _eps(module, x, 1e-6))
    w = _shaped(module.weight, y, dim)
    return y * w if w is not None else y


def global_response_norm(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """ConvNeXt-V2's GRN: ``x + bias + weight * x * G / mean_c(G)`` (G: the L2 norm over the spatial
    dimensions), the mean taken over the kept channels."""
    spatial = [d for d in range(1, x.dim()) if d != dim]
    g = torch.linalg.vector_norm(x, ord=2, dim=spatial, keepdim=True)
    n = g / (_mean(g, mask, dim) + _eps(module, x, 1e-6))
    return x + _shaped(module.bias, x, dim) + _shaped(module.weight, x, dim) * (x * n)


def one_group_norm(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """GroupNorm with one group: statistics over the kept channels of ``dim`` and every position."""
    dims = tuple(range(1, x.dim()))
    count = mask.sum() * (x[0].numel() // x.shape[dim])
    mean = (x * mask).sum(dims, keepdim=True) / count
    centred = x - mean
    y = centred * torch.rsqrt((centred * centred * mask).sum(dims, keepdim=True) / count + _eps(module, x, 1e-5))
    y = y * _shaped(module.weight, y, dim)
    b = _shaped(module.bias, y, dim)
    return y + b if b is not None else y


NORM_KINDS: dict[str, NormFn] = {"LayerNorm": layer_norm, "RMSNorm": rms_norm, "GRN": global_response_norm,
                                 "GroupNorm": one_group_norm}
"""What each kind of channel normalization computes over the kept channels."""

_BY_NAME = (("globalresponsenorm", "GRN"), ("grn", "GRN"), ("rmsnorm", "RMSNorm"),
            ("imagegptlayernorm", "RMSNorm"), ("layernorm", "LayerNorm"))
"""Class-name endings (lower case) of the normalization kinds, beyond the classes matched by type (ImageGPT's
LayerNorm subtracts no mean: an RMSNorm)."""


def norm_kind(module: nn.Module) -> str | None:
    """The kind (a key of :data:`NORM_KINDS`) of a channel-normalization module, else None.

    ``nn.LayerNorm`` (and subclasses: timm's ``LayerNorm`` / ``LayerNorm2d``, transformers' ``ConvNextLayerNorm``)
    and ``nn.RMSNorm`` by type, with a weight parameter or none, and an affine ``nn.GroupNorm`` with one group
    (timm's ``GroupNorm1``); others by class name (timm ``RmsNorm`` /
    ``RmsNorm2d`` / ``GlobalResponseNorm``, transformers' ``*LayerNorm`` / ``*RMSNorm`` / ``*GRN``), with a
    weight parameter or, without one, a one-dimensional ``normalized_shape`` (timm's ``RmsNorm`` without
    affine). A name that matches a class computing something else (Gemma's ``1 + weight``) is caught by the
    strip proof and refused there.
    """
    if isinstance(module, nn.LayerNorm):
        return "LayerNorm"
    if isinstance(module, getattr(nn, "RMSNorm", ())):
        return "RMSNorm"
    if isinstance(module, nn.GroupNorm):
        return "GroupNorm" if module.num_groups == 1 and module.affine else None
    if module._parameters.get("weight") is None and weightless_width(module) is None:
        return None
    name = type(module).__name__.lower()
    if name.endswith(("fp32", "exp2d")):  # timm's float32 twins compute the same; Exp2d's channels-first path too
        name = name.removesuffix("fp32").removesuffix("exp2d")
    if activated(module):
        name = name.removesuffix("2d").removesuffix("act")
    return next((kind for end, kind in _BY_NAME if name.endswith(end) or name.endswith(end + "2d")), None)


def activated(module: nn.Module) -> bool:
    """A timm norm-and-activation module (``RmsNormAct2d``, ``LayerNormAct``): its forward applies its ``drop``
    and ``act`` to the normalization's output."""
    name = type(module).__name__.lower()
    return name.endswith(("act", "act2d")) and isinstance(getattr(module, "act", None), nn.Module) \
        and isinstance(getattr(module, "drop", None), nn.Module)


@dataclass
class NormRecord:
    """A known normalization module whose statistics run over a channel space."""

    module: str
    kind: str
    dim: int  # the dimension of the module's input that holds the channels
    label: Label  # their channel space


@dataclass
class NormTracker:
    """Trace-time bookkeeping: statistics over channels inside known normalization modules are held back
    (:meth:`normalized`) and, once the trace is complete, accepted as a :class:`NormRecord` or blocked (:meth:`finish`)."""

    kinds: dict[str, str]
    inputs: dict[str, list[list[Label]]] = field(default_factory=dict)  # labels of each call's first input
    deferred: list[tuple[str, Label, str]] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module) -> "NormTracker":
        return cls({name: kind for name, m in model.named_modules() if (kind := norm_kind(m)) is not None})

    def enter(self, module: str, labels: list[Label]) -> None:
        self.inputs.setdefault(module, []).append(labels)

    def normalized(self, table: SpaceTable, module: str, label: Label, reason: str) -> None:
        """Statistics over ``label`` computed in ``module``: held back if ``module`` is a known norm (see
        :meth:`finish`), else the space is blocked."""
        if module in self.kinds and label:
            self.deferred.append((module, label, reason))
        else:
            table.block_label(label, reason)

    def finish(self, table: SpaceTable, param_labels: dict[str, list[Label]],
               classes: dict[str, str]) -> list[NormRecord]:
        """Records of the norms whose statistics run over their weight's channels (without weight: the channels
        they normalize), in one dimension of their input; every other held-back statistic blocks its space now."""
        records: dict[str, NormRecord] = {}
        for module, label, reason in self.deferred:
            weight = param_labels.get(f"{module}.weight" if module else "weight")
            atoms = table.atoms(label)
            channel = [lab for lab in weight if lab] if weight is not None else [label]
            if len(channel) != 1 or table.atoms(channel[0]) != atoms:
                table.block_label(label, reason)
                continue
            dims = {next((d for d, lab in enumerate(call) if lab and table.atoms(lab) == atoms), None)
                    for call in self.inputs.get(module, [])}
            if len(dims) != 1 or None in dims:
                table.block_label(label, f"{reason}: its channels are not one dimension of the input of "
                                         f"{module} ({classes.get(module, '?')}) in every call")
                continue
            records.setdefault(module, NormRecord(module, self.kinds[module], dims.pop(), channel[0]))
        return list(records.values())


class NormMaskHook:
    """A forward hook giving a normalization module's output computed over the kept channels only.

    The mask is placed once per device and dtype and updated in place (as :class:`..algorithm.masks._MaskHook`
    does); while every channel is kept the module's own output stands.
    """

    transparent_to_analysis = True  # the analysis traces the model without its masks

    def __init__(self, record: NormRecord, mask: torch.Tensor) -> None:
        self.record = record
        self.fn = NORM_KINDS[record.kind]
        self.mask = mask
        self.active = not bool(mask.all())
        self._placed: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def update(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.active = not bool(mask.all())
        for placed in self._placed.values():
            placed.copy_(mask.reshape(placed.shape), non_blocking=True)

    def _placed_mask(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype, x.dim())
        m = self._placed.get(key)
        if m is None:
            view = [1] * x.dim()
            view[self.record.dim] = -1
            m = self._placed[key] = self.mask.reshape(view).to(device=x.device, dtype=x.dtype)
        return m

    def post(self, module: nn.Module, args, output):
        if not self.active:
            return None
        x = args[0]
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        y = self.fn(module, x.to(compute), self._placed_mask(x.to(compute)), self.record.dim)
        y = y.to(output.dtype if isinstance(output, torch.Tensor) else x.dtype)
        return module.act(module.drop(y)) if activated(module) else y


def norm_masks(table: SpaceTable, records: list[NormRecord], leaf_masks: dict[int, torch.Tensor],
               spaces: set[int] | None = None) -> dict[str, tuple[NormRecord, torch.Tensor]]:
    """Module → (record, kept-channel mask) of every norm over a channel space that ``leaf_masks`` prunes
    (or, given ``spaces``, that indexes one of these leaf spaces, pruned or not)."""
    out = {}
    for r in records:
        if spaces is not None and not any(leaf in spaces for leaf in table.leaves(r.label)):
            continue
        mask = table.label_mask(r.label, leaf_masks)
        if spaces is not None or not bool(mask.all()):
            out[r.module] = (r, mask)
    return out


def install_norm_hooks(model: nn.Module, masks: dict[str, tuple[NormRecord, torch.Tensor]]) -> list:
    """Register a :class:`NormMaskHook` on each module of ``masks``; returns the hook handles."""
    handles = []
    for name, (record, mask) in masks.items():
        handles.append(model.get_submodule(name).register_forward_hook(NormMaskHook(record, mask).post))
    return handles


def weightless_width(module: nn.Module | None) -> int | None:
    """The width of a LayerNorm / RMSNorm without weight (kept in its ``normalized_shape`` only), else None."""
    shape = getattr(module, "normalized_shape", None)
    if module is None or module._parameters.get("weight") is not None or not isinstance(shape, tuple) \
            or len(shape) != 1:
        return None
    return shape[0]


def refresh_weightless(module: nn.Module, width: int) -> None:
    """A LayerNorm / RMSNorm without weight normalizing over ``width`` channels now (its only record of them)."""
    if weightless_width(module) is not None:
        module.normalized_shape = (width,)
