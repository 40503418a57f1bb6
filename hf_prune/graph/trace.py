"""Tracing a model once: run it eagerly under a ``TorchDispatchMode`` and label channel spaces.

Why a dispatch-level runtime trace (and not torch.fx or torch.export): the model simply runs, so
Python control flow, timm's and transformers' dynamic code paths and arbitrary forward signatures all
work; every op reaches us as one of ATen's canonical operators (so a few dozen rules cover every model,
and ``torch.Tag.pointwise`` classifies the elementwise ones authoritatively); parameters keep their
identity, so each op knows which weights it uses; and a forward pass costs milliseconds, not the
seconds of ``torch.export``. Module hooks give every op its module path for error messages and reasons.

How each op moves channels is its rule in :data:`CHANNEL_RULES`; :func:`register_channel_rule` adds one for an
op the table lacks (an op without a rule keeps every channel it touches, with that as the stated reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from ..errors import AnalysisError
from ..text import did_you_mean
from . import multihead
from .adapters import input_width_attributes
from .canonical import OP_VARIANTS, canonicalize
from .norms import NormRecord, NormTracker
from .reshapes import ScalarCall, ViewCall, ViewRecorder
from .spaces import Label, Site, SpaceTable

aten = torch.ops.aten


@dataclass
class TensorInfo:
    labels: list[Label]
    param: str | None = None  # the parameter/buffer this tensor is a pure view of
    op: str = ""  # the op that produced it


@dataclass(frozen=True)
class ParamUse:
    """A parameter dimension used as a conv/linear output ('out') or contracted input ('in')."""

    param: str
    dim: int
    role: str
    module: str


@dataclass
class FlopOp:
    """An op whose FLOPs scale with the kept fraction of each of ``labels``."""

    op: str
    module: str
    flops: int
    labels: list[Label]


@dataclass
class ConvRecord:
    module: str
    weight: str | None
    stride: tuple[int, ...]
    groups: int
    in_label: Label
    out_label: Label
    groups_label: Label | None  # the space of the conv's groups when groups > 1


@dataclass
class ModelTrace:
    """What one traced forward pass taught us about a model's channels."""

    table: SpaceTable
    param_labels: dict[str, list[Label]]
    param_shapes: dict[str, tuple[int, ...]]
    uses: list[ParamUse]
    flop_ops: list[FlopOp]
    convs: list[ConvRecord]
    computed_weights: dict[str, str]
    opaque_ops: dict[str, str]
    input_labels: list[Label]
    module_classes: dict[str, str]
    standardized: dict[str, float] = field(default_factory=dict)
    """Parameters standardized per output filter in forward (weight-standardized convs), with their eps."""
    head_labels: list[Label] = field(default_factory=list)
    """Batch dimensions of per-head contractions (``scaled_dot_product_attention``, a matmul of two
    activations): the attention heads, when a reshape split them from a projection's channels."""
    norms: list[NormRecord] = field(default_factory=list)
    """Normalization modules whose statistics run over a channel space (masked over kept channels)."""
    views: list[ViewCall] = field(default_factory=list)
    """Every ``view``/``reshape`` call, with its output's channel spaces, and every split, with its pieces'
    (:mod:`.reshapes`)."""
    scalars: list[ScalarCall] = field(default_factory=list)
    """Every call of a tensor and a Python number (``q * scale``), with the number (:mod:`.reshapes`)."""
    input_widths: dict[str, list[Label]] = field(default_factory=dict)
    """The first input's spaces of each module with a width attribute its code checks the input against
    (:func:`.adapters.input_width_attributes`)."""
    resized_views: dict[str, dict[str, set[int]]] | None = None
    """The view calls whose module's code computes a wrong size once stripped, with their channel dimensions,
    and the number calls whose code computes another number (no dimensions) (found by the strip check; None
    where it did not run: then nothing is resized or pinned)."""


_IDENTITY = {
    aten.alias, aten.detach, aten.clone, aten._to_copy, aten.lift_fresh, aten.lift_fresh_copy,
    aten.contiguous, aten.fill_, aten.zero_, aten.hardswish, aten.hardswish_, aten.mish, aten.mish_,
    aten.softplus, aten.elu, aten.elu_, aten.selu, aten.selu_, aten.celu, aten.celu_, aten.native_dropout,
    aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten._fused_dropout,
}
_ELEMENTWISE = {
    # Per-element ops whose torch.Tag.pointwise varies across torch releases (torch 2.11 leaves hardtanh_,
    # hardsigmoid_ and leaky_relu untagged, so MobileNetV2's ReLU6 blocked every expansion channel there).
    aten.hardtanh, aten.hardtanh_, aten.hardsigmoid, aten.hardsigmoid_, aten.leaky_relu, aten.leaky_relu_,
    aten.gelu, aten.gelu_, aten.threshold, aten.threshold_, aten.relu, aten.relu_, aten.silu, aten.silu_,
    aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.clamp, aten.clamp_, aten.clamp_min, aten.clamp_min_,
    aten.clamp_max, aten.clamp_max_,
}
_VIEW_LIKE = {
    aten.view, aten._unsafe_view, aten.reshape, aten.unsqueeze, aten.squeeze, aten.flatten, aten.unflatten,
    aten.view_as, aten.reshape_as,
}
_SPATIAL_OPS = {
    aten.max_pool1d: 1, aten.max_pool2d: 2, aten.max_pool3d: 3, aten.max_pool2d_with_indices: 2,
    aten.max_pool3d_with_indices: 3, aten.avg_pool1d: 1, aten.avg_pool2d: 2, aten.avg_pool3d: 3,
    aten._adaptive_avg_pool2d: 2, aten._adaptive_avg_pool3d: 3, aten.adaptive_avg_pool1d: 1,
    aten.adaptive_max_pool1d: 1, aten.adaptive_max_pool2d: 2, aten.adaptive_max_pool3d: 3,
    aten.upsample_nearest1d: 1, aten.upsample_nearest2d: 2, aten.upsample_nearest3d: 3,
    aten.upsample_bilinear2d: 2, aten._upsample_bilinear2d_aa: 2, aten.upsample_bicubic2d: 2,
    aten._upsample_nearest_exact2d: 2, aten.upsample_linear1d: 1, aten.upsample_trilinear3d: 3,
    aten.reflection_pad2d: 2, aten.replication_pad2d: 2, aten.reflection_pad1d: 1,
}
_REDUCTIONS = {
    aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.var_mean, aten.std_mean,
    aten.max, aten.min, aten.logsumexp, aten.linalg_vector_norm, aten.norm, aten.prod, aten.argmax, aten.argmin,
}
_SOFTMAX = {aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax}
_BATCH_NORMS = {
    aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit_functional,
}
_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
}

_SDPA_BIAS_AT_3 = {
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
}


def _tensors(xs: Iterable[Any]) -> list[torch.Tensor]:
    return [x for x in xs if isinstance(x, torch.Tensor)]


def _dims(dim: Any, ndim: int) -> list[int]:
    if dim is None:
        return list(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted({d % ndim for d in dims}) if ndim else []


class _Tracer(TorchDispatchMode):
    """Labels every tensor's dimensions with channel spaces as the model runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.table = SpaceTable()
        self.infos: dict[int, TensorInfo] = {}
        self.keep: list[torch.Tensor] = []  # keeps traced tensors alive so ids stay unique
        self.named: dict[int, str] = {}
        self.classes = {n: type(m).__name__ for n, m in model.named_modules()}
        for name, p in model.named_parameters(remove_duplicate=True):
            self.named.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=True):
            self.named.setdefault(id(b), name)
        self.param_labels: dict[str, list[Label]] = {}
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.uses: list[ParamUse] = []
        self.flop_ops: list[FlopOp] = []
        self.convs: list[ConvRecord] = []
        self.computed_weights: dict[str, str] = {}
        self.standardized: dict[str, float] = {}  # parameter → eps of its per-filter standardization
        self.opaque_ops: dict[str, str] = {}  # module → why an op without a channel rule blocks its parameters
        self.head_labels: list[Label] = []
        self.norms = NormTracker.of(model)
        self.stack: list[str] = [""]
        self.inside_one_op = 0  # > 0 while a module traced as one op runs (its own ops are not labelled)
        self.consumed: set[int] = set()  # ids of the tensors some op took as an input
        self.if_used: list[tuple[torch.Tensor, Label, str]] = []  # (tensor, label blocked if it is used, reason)
        self.last_op = ""
        self.failed_at: tuple[str, str] | None = None  # (module, op) of the first failing op

    # ------------------------------------------------------------------ bookkeeping
    @property
    def module(self) -> str:
        return self.stack[-1]

    def module_class(self, name: str) -> str:
        return self.classes.get(name, "?")

    def where(self, op: str) -> str:
        return f"{op} in {self.module or '<model>'}"

    def info(self, t: torch.Tensor) -> TensorInfo:
        found = self.infos.get(id(t))
        if found is not None:
            return found
        name = self.named.get(id(t))
        if name is not None:
            labels = [self.table.new_label(n) for n in t.shape]
            self.param_labels[name] = labels
            self.param_shapes[name] = tuple(t.shape)
            return self.set(t, labels, param=name, op="parameter")
        reason = f"tensor constant used by {self.where(self.last_op)}"
        return self.set(t, [self.table.new_label(n, reason) for n in t.shape], op="constant")

    def set(self, t: torch.Tensor, labels: list[Label], param: str | None = None, op: str = "") -> TensorInfo:
        info = TensorInfo(labels, param, op)
        self.infos[id(t)] = info
        self.keep.append(t)
        return info

    def fresh(self, t: torch.Tensor, reason: str | None = None) -> list[Label]:
        return [self.table.new_label(n, reason) for n in t.shape]

    def label_outputs(self, outs: list[torch.Tensor], reason: str) -> None:
        for o in outs:
            if id(o) not in self.infos:
                self.set(o, self.fresh(o, reason), op=self.last_op)

    def normalized(self, label: Label, reason: str) -> None:
        """Statistics over ``label``: blocks it, unless a known normalization module computes them."""
        self.norms.normalized(self.table, self.module, label, reason)

    def block_all(self, tensors: list[torch.Tensor], reason: str) -> None:
        for t in tensors:
            for lab in self.info(t).labels:
                self.table.block_label(lab, reason)

    def block_if_used(self, t: torch.Tensor, label: Label, reason: str) -> None:
        """Block ``label`` once the trace is over if an op used ``t`` or the model returned it."""
        self.if_used.append((t, label, reason))

    def finish_if_used(self, outputs: list[torch.Tensor]) -> None:
        used = self.consumed | {id(o) for o in outputs}
        for t, label, reason in self.if_used:
            if id(t) in used:
                self.table.block_label(label, reason)

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.inside_one_op:
            return func(*args, **kwargs)
        packet = func.overloadpacket
        self.last_op = str(packet)  # "aten.convolution", "mylib.my_op"
        try:
            out = func(*args, **kwargs)
        except Exception:
            self.failed_at = self.failed_at or (self.module, self.last_op)
            raise
        flat_args = tree_flatten((args, kwargs))[0]
        ins = _tensors(flat_args)
        outs = _tensors(tree_flatten(out)[0])
        self.consumed.update(map(id, ins))
        if not outs:
            return out
        func, args, kwargs = canonicalize(func, args, kwargs)
        packet = func.overloadpacket
        rule = CHANNEL_RULES.get(packet)
        if rule is None and torch.Tag.pointwise in func.tags:
            rule = _Tracer._pointwise
        if rule is not None:
            rule(self, func, args, kwargs, out)
        elif not ins:
            self.label_outputs(outs, f"created by {self.where(self.last_op)}")
        else:
            reason = (f"used by {self.where(self.last_op)}, which has no channel rule "
                      f"(hf_prune.register_channel_rule)")
            self.block_all(ins, reason)
            self.label_outputs(outs, f"produced by {self.where(self.last_op)}")
            for t in ins:
                param = self.info(t).param
                if param is not None:
                    self.opaque_ops.setdefault(param.rpartition(".")[0], f"its {param.rpartition('.')[2]} is {reason}")
        if packet in flop_registry or packet in _SDPA:
            self._count_flops(packet, func, args, kwargs, out)
        return out

    # ------------------------------------------------------------------ rules
    def _identity(self, func, args, kwargs, out):
        x = self.info(args[0])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in _tensors(outs):
            if o.shape == args[0].shape:
                self.set(o, list(x.labels), param=x.param, op=self.last_op)
            else:
                self.set(o, self.fresh(o), op=self.last_op)

    def _restride(self, func, args, kwargs, out):
        """A new memory layout of the same shape (channels_last kernels) keeps the labels; any other
        strided view is opaque."""
        x = self.info(args[0])
        if tuple(out.shape) == tuple(args[0].shape):
            if not (out is args[0] and id(out) in self.infos):
                self.set(out, list(x.labels), param=x.param, op=self.last_op)
            return
        self.block_all([args[0]], f"viewed with arbitrary strides by {self.where(self.last_op)}")
        self.set(out, self.fresh(out, f"produced by {self.where(self.last_op)}"), op=self.last_op)

    def _pointwise(self, func, args, kwargs, out):
        ins = _tensors(tree_flatten((args, kwargs))[0])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        o = outs[0]
        labels = self._broadcast(ins, tuple(o.shape))
        for t in _tensors(outs):
            if t is args[0] and id(t) in self.infos:  # in-place: keep identity, labels were unified
                continue
            self.set(t, list(labels) if t.shape == o.shape else self.fresh(t), op=self.last_op)

    def _broadcast(self, ins: list[torch.Tensor], shape: tuple[int, ...]) -> list[Label]:
        labels: list[Label | None] = [None] * len(shape)
        for t in ins:
            info = self.info(t)
            offset = len(shape) - t.dim()
            for d, n in enumerate(t.shape):
                if n == 1 and shape[offset + d] != 1:
                    continue
                lab = info.labels[d]
                cur = labels[offset + d]
                labels[offset + d] = lab if cur is None else self.table.unify(cur, lab)
        return [lab if lab is not None else self.table.new_label(n) for lab, n in zip(labels, shape)]

    def _reshape(self, func, args, kwargs, out):
        x = self.info(args[0])
        flat: Label = tuple(s for lab in x.labels for s in lab)
        parts = self.table.split(flat, list(out.shape), Site("reshape", self.module))
        if parts is None:
            reason = f"reshaped irregularly by {self.where(self.last_op)}"
            self.table.block_label(flat, reason)
            self.set(out, self.fresh(out, reason), op=self.last_op)
        else:
            self.set(out, parts, param=x.param, op=self.last_op)

    def _permute(self, func, args, kwargs, out):
        x = self.info(args[0])
        dims = _dims(None, args[0].dim()) if len(args) < 2 else [d % max(args[0].dim(), 1) for d in args[1]]
        self.set(out, [x.labels[d] for d in dims], param=x.param, op=self.last_op)

    def _transpose(self, func, args, kwargs, out):
        x = self.info(args[0])
        labels = list(x.labels)
        if len(labels) >= 2:
            d0, d1 = (args[1] % len(labels), args[2] % len(labels)) if len(args) > 2 else (0, 1)
            labels[d0], labels[d1] = labels[d1], labels[d0]
        self.set(out, labels, param=x.param, op=self.last_op)

    def _expand(self, func, args, kwargs, out):
        x = self.info(args[0])
        offset = out.dim() - args[0].dim()
        labels = [self.table.new_label(n) for n in out.shape[:offset]]
        for d, n in enumerate(args[0].shape):
            labels.append(x.labels[d] if n == out.shape[offset + d] else self.table.new_label(out.shape[offset + d]))
        self.set(out, labels, param=x.param, op=self.last_op)

    def _repeat(self, func, args, kwargs, out):
        x = self.info(args[0])
        offset = out.dim() - args[0].dim()
        labels = [self.table.new_label(n) for n in out.shape[:offset]]
        for d, times in enumerate(args[1][offset:]):
            if times == 1:
                labels.append(x.labels[d])
            else:  # tiled: the copies are not channels of their own
                self.table.block_label(x.labels[d], f"tiled by {self.where(self.last_op)}")
                labels.append(self.table.new_label(out.shape[offset + d]))
        self.set(out, labels, param=x.param, op=self.last_op)

    def _spatial(self, func, args, kwargs, out):
        x = self.info(args[0])
        k = _SPATIAL_OPS[func.overloadpacket]
        outs = _tensors(out if isinstance(out, (tuple, list)) else (out,))
        lead = x.labels[: args[0].dim() - k]
        for o in outs:
            self.set(o, list(lead) + self.fresh(o)[len(lead):], op=self.last_op)

    def _reduction(self, func, args, kwargs, out):
        t = args[0]
        x = self.info(t)
        first = 2 if func.overloadpacket in (aten.linalg_vector_norm, aten.norm) else 1  # (x, ord, dim, keepdim)
        dim = kwargs.get("dim", args[first] if len(args) > first and not isinstance(args[first], bool) else None)
        if isinstance(dim, (list, tuple)) and len(dim) == 0:
            dim = None
        reduced = _dims(dim, t.dim())
        keepdim = kwargs.get("keepdim", next((a for a in args[first + 1:] if isinstance(a, bool)), False))
        for d in reduced:
            self.normalized(x.labels[d], f"reduced over by {self.where(self.last_op)}")
        kept = [lab if d not in reduced else () for d, lab in enumerate(x.labels) if keepdim or d not in reduced]
        for o in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
            self.set(o, kept if o.dim() == len(kept) else self.fresh(o), op=self.last_op)

    def _softmax(self, func, args, kwargs, out):
        x = self.info(args[0])
        d = args[1] % args[0].dim()
        self.table.block_label(x.labels[d], f"normalized over by {self.where(self.last_op)}")
        self.set(out, list(x.labels), op=self.last_op)

    def _batch_norm(self, func, args, kwargs, out):
        x = self.info(args[0])
        channel = x.labels[1] if args[0].dim() > 1 else ()
        for p in _tensors(args[1:5]):
            self.table.unify(channel, self.info(p).labels[0])
        training = func.overloadpacket is aten._native_batch_norm_legit_functional or (
            func.overloadpacket is not aten._native_batch_norm_legit_no_training
            and next((a for a in args[1:] if isinstance(a, bool)), False)
        )
        if training and self._standardizes_weight(args, x):
            self.standardized[x.param] = float(args[-1])  # eps: each variant's last argument
            self.set(out[0], list(x.labels), param=x.param, op="weight standardization")
            self.label_outputs(_tensors(out[1:]), f"statistics of {self.where(self.last_op)}")
            return
        if training:
            for d, lab in enumerate(x.labels):
                if d != 1:
                    self.table.block_label(lab, f"batch statistics over it in {self.where(self.last_op)}")
        self.set(out[0], list(x.labels), op=self.last_op)
        self.label_outputs(_tensors(out[1:]), f"statistics of {self.where(self.last_op)}")

    def _standardizes_weight(self, args, x: TensorInfo) -> bool:
        """A batch norm of a parameter viewed as ``(1, out, rest)``, without bias or running statistics: each
        filter standardized over its inputs × kernel (timm's ``StdConv2d``); masks make its statistics
        cover kept inputs only (:mod:`.standardization`)."""
        t = args[0]
        if x.param is None or t.dim() != 3 or t.shape[0] != 1 or _tensors(args[2:5]):
            return False
        labels = self.param_labels[x.param]
        atoms = self.table.atoms
        return atoms(labels[0]) == atoms(x.labels[1]) and atoms(tuple(s for lab in labels[1:] for s in lab)) == atoms(x.labels[2])

    def _layer_norm(self, func, args, kwargs, out):
        x = self.info(args[0])
        k = len(args[1])
        norm_labels = x.labels[args[0].dim() - k:]
        for p in _tensors(args[2:4]):
            for a, b in zip(norm_labels, self.info(p).labels):
                self.table.unify(a, b)
        for lab in norm_labels:
            reason = f"normalized over by LayerNorm ({self.where(self.last_op)})"
            if k == 1:
                self.normalized(lab, reason)
            else:
                self.table.block_label(lab, f"{reason}, over {k} dimensions")
        self.set(out[0], list(x.labels), op=self.last_op)
        self.label_outputs(_tensors(out[1:]), f"statistics of {self.where(self.last_op)}")

    def _group_norm(self, func, args, kwargs, out):
        x = self.info(args[0])
        groups = args[6]  # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
        channel = x.labels[1]
        for p in _tensors(args[1:3]):
            self.table.unify(channel, self.info(p).labels[0])
        reason = f"normalized over by GroupNorm ({self.where(self.last_op)})"
        size = args[0].shape[1]
        if groups == 1:
            self.normalized(channel, reason)
        elif groups != size:
            parts = self.table.split(channel, [groups, size // groups], Site("groups", self.module))
            if parts is None:
                self.table.block_label(channel, reason)
            else:
                self.table.block_label(parts[1], f"channels inside the groups of GroupNorm {self.module or '<model>'} "
                                                 f"(whole groups of {size // groups} channels are pruned)")
        for lab in x.labels[2:]:
            self.table.block_label(lab, reason)
        self.set(out[0], list(x.labels), op=self.last_op)
        self.label_outputs(_tensors(out[1:]), f"statistics of {self.where(self.last_op)}")

    def _param_dim(self, info: TensorInfo, label: Label) -> int | None:
        if info.param is None:
            return None
        atoms = self.table.atoms(label)
        for d, lab in enumerate(self.param_labels[info.param]):
            if lab and self.table.atoms(lab) == atoms:
                return d
        return None

    def _use(self, info: TensorInfo, label: Label, role: str) -> None:
        d = self._param_dim(info, label)
        if d is not None:
            self.uses.append(ParamUse(info.param, d, role, self.module))

    def _conv(self, func, args, kwargs, out):
        x_t, w_t, b_t = args[0], args[1], args[2]
        stride, transposed, groups = tuple(args[3]), args[6], args[8]
        x, w = self.info(x_t), self.info(w_t)
        where = self.where("aten.convolution")
        if transposed and groups != 1:
            self.block_all([x_t, w_t], f"grouped transposed convolution ({where}) is not supported")
            self.set(out, self.fresh(out, f"produced by grouped transposed convolution ({where})"), op=self.last_op)
            return
        if transposed:  # weight (in, out, ...): filters along dim 1; it upsamples, so it is no downsample conv
            w_out, w_in, stride = 1, 0, (1,) * len(stride)
        else:
            w_out, w_in = 0, 1
        in_label, out_label = x.labels[1], w.labels[w_out]
        groups_label: Label | None = None
        cin, cout = x_t.shape[1], w_t.shape[0]
        if groups == 1:
            self.table.unify(in_label, w.labels[w_in])
        else:
            site = Site("groups", self.module)
            ins = self.table.split(in_label, [groups, cin // groups], site)
            outs = self.table.split(out_label, [groups, cout // groups], site)
            if ins is None or outs is None:
                self.block_all([x_t, w_t], f"grouped convolution channels cannot be aligned ({where})")
            else:
                groups_label = self.table.unify(ins[0], outs[0])
                self.table.unify(ins[1], w.labels[1])
                inner = f"channels inside the groups of grouped convolution {self.module} (whole groups are pruned)"
                self.table.block_label(ins[1], inner)
                self.table.block_label(outs[1], inner)
        if b_t is not None:
            self.table.unify(out_label, self.info(b_t).labels[0])
        if w.param is None:
            self.computed_weights[self.module] = f"its weight is computed in forward ({w.op})"
            self.table.block_label(in_label, f"contracted by {where} with a computed weight")
        else:
            self._use(w, w.labels[w_out], "out")
            self._use(w, w.labels[w_in], "in")
        self.convs.append(ConvRecord(self.module, w.param, stride, groups, in_label, out_label, groups_label))
        spatial = []
        for d, lab in enumerate(x.labels[2:]):
            if _pointwise_axis(w_t.shape[2 + d], stride[d % len(stride)], args[4], d, transposed):
                spatial.append(lab)  # each position alone (CoaT aggregates its scales by a 1×1 conv over channels)
                continue
            self.table.block_label(lab, f"convolved over as a spatial axis by {where}")  # mixed with neighbours (ECA)
            spatial.append(self.table.new_label(out.shape[2 + d], f"spatial dimension of {where}"))
        self.set(out, [x.labels[0], out_label] + spatial, op=self.last_op)

    def _mm(self, func, args, kwargs, out):
        packet = func.overloadpacket
        bias, a_t, b_t = (args[0], args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (None, args[0], args[1])
        a, b = self.info(a_t), self.info(b_t)
        where = self.where(self.last_op)
        self.table.unify(a.labels[-1], b.labels[-2])
        labels = list(a.labels[:-1]) + [b.labels[-1]]
        if a_t.dim() == 3:
            self.table.unify(a.labels[0], b.labels[0])
        if b.param is not None:
            self._use(b, b.labels[-2], "in")
            self._use(b, b.labels[-1], "out")
        elif a.param is None:
            self.table.block_label(a.labels[-1], f"contracted between two activations by {where}")
            if a_t.dim() == 3:
                self.head_labels.append(a.labels[0])
        else:
            self.computed_weights[self.module] = f"its weight is the left operand of {where}"
        if bias is not None:
            bias_labels = self.info(bias).labels
            for d, n in enumerate(bias.shape):
                od = out.dim() - bias.dim() + d
                if n == out.shape[od]:
                    labels[od] = self.table.unify(labels[od], bias_labels[d])
        self.set(out, labels, op=self.last_op)

    def _sdpa(self, func, args, kwargs, out):
        q, k, v = (self.info(t) for t in args[:3])
        where = self.where(self.last_op)
        if args[0].shape[1] != args[1].shape[1]:  # grouped-query attention: query heads share key/value heads
            self.block_all(list(args[:3]), f"grouped-query attention ({args[0].shape[1]} query heads, "
                                            f"{args[1].shape[1]} key/value heads) in {where}: heads are not pruned")
            self.set(out[0], self.fresh(out[0], f"produced by {where}"), op=self.last_op)
            self.label_outputs(_tensors(out[1:]), f"statistics of {where}")
            return
        self.head_labels.append(q.labels[1])
        mask = kwargs.get("attn_mask", args[3] if func.overloadpacket in _SDPA_BIAS_AT_3 and len(args) > 3 else None)
        if isinstance(mask, torch.Tensor):  # a per-head bias (relative positions) follows the heads
            m, offset = self.info(mask), 4 - mask.dim()
            for d in range(max(0, 2 - offset)):  # its batch and head dimensions, where not broadcast
                if mask.shape[d] == args[0].shape[offset + d]:
                    self.table.unify(q.labels[offset + d], m.labels[d])
        for d in (0, 1):
            self.table.unify(q.labels[d], k.labels[d])
            self.table.unify(q.labels[d], v.labels[d])
        self.table.unify(q.labels[3], k.labels[3])
        self.table.block_label(q.labels[3], f"contracted between two activations by {where}")
        self.table.unify(k.labels[2], v.labels[2])
        self.table.block_label(k.labels[2], f"normalized over by softmax in {where}")
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.set(outs[0], [q.labels[0], q.labels[1], q.labels[2], v.labels[3]], op=self.last_op)
        self.label_outputs(_tensors(outs[1:]), f"statistics of {where}")

    def _index(self, func, args, kwargs, out):
        """``x[..., idx, ...]``: indexed dimensions are blocked, the others keep their labels (a per-head table
        gathered by relative positions keeps its head dimension)."""
        t, indices = args[0], list(args[1])
        where = self.where(self.last_op)
        idx = _tensors(indices)
        self.block_all(idx, f"used as indices by {where}")
        labels = None
        if not any(i.dtype in (torch.bool, torch.uint8) for i in idx):  # a mask's output shape is data-dependent
            labels = self._gather_labels(self.info(t), [d for d, i in enumerate(indices) if i is not None],
                                         len(indices), out, where)
        if labels is None:
            self.block_all([t], f"indexed irregularly by {where}")
            labels = self.fresh(out, f"produced by {where}")
        self.set(out, labels, op=self.last_op)

    def _embedding(self, func, args, kwargs, out):
        """A lookup table's rows (``nn.Embedding``: position embeddings): its width is a channel dimension."""
        w, idx = self.info(args[0]), self.info(args[1])
        self.table.block_label(w.labels[0], f"indexed by {self.where(self.last_op)}")
        self.set(out, list(idx.labels) + [w.labels[1]], op=self.last_op)

    def _gather_labels(self, x: TensorInfo, indexed: list[int], n: int, out: torch.Tensor,
                       where: str) -> list[Label] | None:
        for d in indexed:
            self.table.block_label(x.labels[d], f"indexed by {where}")
        first, last = indexed[0], indexed[-1]
        if indexed == list(range(first, last + 1)):  # adjacent: the gathered dimensions replace them in place
            lead, tail = list(x.labels[:first]), list(x.labels[last + 1:n])
        else:  # torch puts the gathered dimensions first
            lead, tail = [], [lab for d, lab in enumerate(x.labels[:n]) if d not in indexed]
        tail += x.labels[n:]
        gathered = out.dim() - len(lead) - len(tail)
        if gathered < 0:
            return None
        new = [self.table.new_label(s, f"produced by {where}") for s in out.shape[len(lead):len(lead) + gathered]]
        return lead + new + tail

    def _cat(self, func, args, kwargs, out):
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        tensors = [t for t in args[0] if t.dim() == out.dim() and t.shape[dim] > 0]
        infos = [self.info(t) for t in tensors]
        labels = list(infos[0].labels)
        for info in infos[1:]:
            for d in range(out.dim()):
                if d != dim:
                    labels[d] = self.table.unify(labels[d], info.labels[d])
        if len(tensors) > 1:
            site = Site("concat", self.module)
            segments = [self.table.space_for(i.labels[dim], site) if i.labels[dim] else self.table.new(1) for i in infos]
            total = self.table.new(out.shape[dim])
            children = self.table.decompose(total, "sum", [t.shape[dim] for t in tensors], site)
            for c, s in zip(children or [], segments):
                self.table.union(c, s)
            labels[dim] = (total,)
        self.set(out, labels, op=self.last_op)

    def _stack(self, func, args, kwargs, out):
        tensors = list(args[0])
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        labels = list(self.info(tensors[0]).labels)
        for t in tensors[1:]:
            labels = [self.table.unify(a, b) for a, b in zip(labels, self.info(t).labels)]
        labels.insert(dim, self.table.new_label(out.shape[dim], f"stacked by {self.where(self.last_op)}"))
        self.set(out, labels, op=self.last_op)

    def _segments(self, t: torch.Tensor, dim: int, sizes: list[int], fixed: bool = True) -> list[Label] | None:
        """The pieces of ``t``'s dimension ``dim`` cut into ``sizes``, a sum of spaces; ``fixed``: at offsets the
        strip cannot change (a slice's), so each piece is blocked (a split's sizes are resized by the strip,
        :mod:`.reshapes`)."""
        lab = self.info(t).labels[dim]
        if len(sizes) == 1:
            return [lab]
        if not lab:
            return None
        site = Site("slice", self.module)
        sid = self.table.space_for(lab, site)
        children = self.table.decompose(sid, "sum", sizes, site)
        if children is None:
            return None
        for c in children if fixed else ():
            self.table.block(c, f"sliced at fixed offsets by {self.where(self.last_op)}")
        return [(c,) if self.table.size(c) > 1 else () for c in children]

    def _equal_chunks(self, label: Label, sizes: list[int]) -> Label | None:
        """Equal chunks (``chunk``, Res2Net's ``split(width)``) as a view ``(chunks, width)``: the chunk index is
        fixed by the code, the width is shared, so every chunk keeps the same channels and all shrink together
        (a split size held in a module attribute is resized by the strip)."""
        parts = self.table.split(label, [len(sizes), sizes[0]], Site("split", self.module))
        if parts is None:
            return None
        self.table.block_label(parts[0], f"split into {len(sizes)} chunks by {self.where(self.last_op)} (their number is fixed)")
        return parts[1]

    def _slice(self, func, args, kwargs, out):
        t = args[0]
        x = self.info(t)
        dim = (args[1] if len(args) > 1 else 0) % t.dim()
        n = t.shape[dim]
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else n
        step = args[4] if len(args) > 4 else 1
        start, end = max(0, start + n if start < 0 else start), min(n, end + n if end < 0 else end)
        labels = list(x.labels)
        if (start, end, step) != (0, n, 1):
            sizes = [s for s in (start, end - start, n - end) if s > 0]
            segs = self._segments(t, dim, sizes) if step == 1 and end > start else None
            if segs is None:
                reason = f"sliced irregularly by {self.where(self.last_op)}"
                self.table.block_label(x.labels[dim], reason)
                labels[dim] = self.table.new_label(out.shape[dim], reason)
            else:
                labels[dim] = segs[1 if start > 0 else 0]
        self.set(out, labels, param=x.param if (start, end, step) == (0, n, 1) else None, op=self.last_op)

    def _select(self, func, args, kwargs, out):
        t = args[0]
        x = self.info(t)
        dim = args[1] % t.dim()
        self.table.block_label(x.labels[dim], f"indexed by {self.where(self.last_op)}")
        self.set(out, [lab for d, lab in enumerate(x.labels) if d != dim], op=self.last_op)

    def _split(self, func, args, kwargs, out):
        t = args[0]
        x = self.info(t)
        dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % t.dim()
        sizes = [o.shape[dim] for o in out]
        chunk = self._equal_chunks(x.labels[dim], sizes) if len(sizes) > 1 and len(set(sizes)) == 1 else None
        segs = [chunk] * len(sizes) if chunk is not None else self._segments(t, dim, sizes, fixed=False)
        if segs is None:
            reason = f"split irregularly by {self.where(self.last_op)}"
            self.table.block_label(x.labels[dim], reason)
        for i, o in enumerate(out):
            labels = list(x.labels)
            labels[dim] = segs[i] if segs is not None else self.table.new_label(o.shape[dim], reason)
            self.set(o, labels, op=self.last_op)

    def _unbind(self, func, args, kwargs, out):
        t = args[0]
        x = self.info(t)
        dim = (args[1] if len(args) > 1 else 0) % t.dim()
        self.table.block_label(x.labels[dim], f"indexed by {self.where(self.last_op)}")
        for o in out:
            self.set(o, [lab for d, lab in enumerate(x.labels) if d != dim], op=self.last_op)

    def _pad(self, func, args, kwargs, out):
        t, pad = args[0], list(args[1])
        x = self.info(t)
        labels = list(x.labels)
        for i in range(len(pad) // 2):
            d = t.dim() - 1 - i
            if pad[2 * i] or pad[2 * i + 1]:
                reason = f"padded by {self.where(self.last_op)}"
                self.table.block_label(labels[d], reason)
                labels[d] = self.table.new_label(out.shape[d], reason)
        self.set(out, labels, op=self.last_op)

    # ------------------------------------------------------------------ FLOPs
    def _count_flops(self, packet, func, args, kwargs, out) -> None:
        if packet in _SDPA:
            q, k, v = args[:3]
            flops = sdpa_flop_count(q.shape, k.shape, v.shape)
            ql, kl, vl = (self.info(t).labels for t in (q, k, v))
            half = flops // 2
            self.flop_ops.append(FlopOp(self.last_op, self.module, half, [ql[0], ql[1], ql[2], kl[2], ql[3]]))
            self.flop_ops.append(FlopOp(self.last_op, self.module, flops - half, [ql[0], ql[1], ql[2], kl[2], vl[3]]))
            return
        flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
        if packet is aten.convolution:
            w = self.info(args[1])
            labels = [w.labels[0], w.labels[1]] + list(self.info(out).labels[2:])
        else:
            a_t, b_t = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
            a, b = self.info(a_t), self.info(b_t)
            labels = list(a.labels) + [b.labels[-1]]
        self.flop_ops.append(FlopOp(self.last_op, self.module, flops, labels))


def _pointwise_axis(kernel: int, stride: int, padding: str | Sequence[int], dim: int, transposed: bool) -> bool:
    """Whether a convolution computes each position of its spatial axis ``dim`` from that position alone
    (``padding``: per axis, one for all, or ``"same"``/``"valid"``, which pad nothing around a 1-wide kernel)."""
    pad = 0 if isinstance(padding, str) else padding[dim % len(padding)] if len(padding) else 0
    return kernel == 1 and stride == 1 and pad == 0 and not transposed


ChannelRule = Callable[[_Tracer, torch._ops.OpOverload, tuple, dict, Any], None]
"""How an op moves channels, called as ``rule(tracer, func, args, kwargs, out)`` after the op ran. It labels
every output tensor with ``tracer.set(out, labels)``, where ``labels`` has one channel space per output
dimension, taken from the inputs' (``tracer.info(t).labels``) or new (``tracer.fresh(t, reason)``). Spaces that
must shrink together are joined with ``tracer.table.unify(a, b)``; a dimension the op mixes (sums over,
normalizes over, indexes) is kept whole with ``tracer.table.block_label(label, reason)``, where the reason says
why, e.g. ``f"summed over by {tracer.where('mylib.op')}"``."""

CHANNEL_RULES: dict[Any, ChannelRule] = {
    aten.convolution: _Tracer._conv, aten.mm: _Tracer._mm, aten.addmm: _Tracer._mm, aten.bmm: _Tracer._mm,
    aten.baddbmm: _Tracer._mm, aten.native_layer_norm: _Tracer._layer_norm,
    aten.native_group_norm: _Tracer._group_norm, aten.permute: _Tracer._permute,
    aten.transpose: _Tracer._transpose, aten.t: _Tracer._transpose, aten.expand: _Tracer._expand,
    aten.repeat: _Tracer._repeat,
    aten.cat: _Tracer._cat, aten.stack: _Tracer._stack, aten.slice: _Tracer._slice, aten.select: _Tracer._select,
    aten.split: _Tracer._split, aten.split_with_sizes: _Tracer._split, aten.unbind: _Tracer._unbind,
    aten.constant_pad_nd: _Tracer._pad, aten.copy_: _Tracer._pointwise,
    aten.as_strided: _Tracer._restride, aten.as_strided_: _Tracer._restride, aten.index: _Tracer._index,
    aten.embedding: _Tracer._embedding,
}
"""Op packet → its channel rule (ATen ops a backend renames reach their rule through
:mod:`.canonical`'s variants; ops tagged ``torch.Tag.pointwise`` without an entry are per element)."""
for _ops, _rule in ((_IDENTITY, _Tracer._identity), (_ELEMENTWISE, _Tracer._pointwise), (_VIEW_LIKE, _Tracer._reshape),
                    (_SPATIAL_OPS, _Tracer._spatial),
                    (_REDUCTIONS, _Tracer._reduction), (_SOFTMAX, _Tracer._softmax),
                    (_BATCH_NORMS, _Tracer._batch_norm), (_SDPA, _Tracer._sdpa)):
    CHANNEL_RULES.update(dict.fromkeys(_ops, _rule))

_NAMED_RULES: dict[str, ChannelRule] = {"pointwise": _Tracer._pointwise, "identity": _Tracer._identity}


def register_channel_rule(op: Any, rule: ChannelRule | Literal["pointwise", "identity"]) -> None:
    """Tell the analysis how ``op`` (e.g. ``torch.ops.mylib.fused_act``) moves channels, so the layers around it
    can be pruned: ``"pointwise"`` for an op computed per element (inputs broadcast, the output keeps their
    channels), ``"identity"`` for an op whose output is its first input's channels unchanged, or a
    :data:`ChannelRule`. An op that computes what an ATen op computes under another name or argument layout is
    an op variant instead (:func:`hf_prune.register_op_variant`): it then shares that op's rule and FLOPs."""
    packet = op.overloadpacket if isinstance(op, torch._ops.OpOverload) else op
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise TypeError(f"op must be an operator such as torch.ops.mylib.my_op, got {op!r}")
    if packet in OP_VARIANTS:
        raise ValueError(f"{packet} is registered as a variant of {OP_VARIANTS[packet][0]}: that op's channel rule "
                         "applies to it")
    if isinstance(rule, str):
        if rule not in _NAMED_RULES:
            raise ValueError(f"unknown channel rule {rule!r}{did_you_mean(rule, _NAMED_RULES)}; expected "
                             f"{' or '.join(map(repr, _NAMED_RULES))} or a function (tracer, func, args, kwargs, out)")
        rule = _NAMED_RULES[rule]
    elif not callable(rule):
        raise TypeError(f"rule must be 'pointwise', 'identity' or a function (tracer, func, args, kwargs, out), "
                        f"got {rule!r}")
    CHANNEL_RULES[packet] = rule


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call a model on a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _shapes(inputs: Any) -> str:
    flat = tree_flatten(inputs)[0]
    return ", ".join(str(tuple(t.shape)) for t in _tensors(flat)) or "no tensors"


def trace_model(model: nn.Module, example_inputs: Any) -> ModelTrace:
    """Run ``model`` once on ``example_inputs`` (eval mode, no grad) and label its channel spaces."""
    tracer = _Tracer(model)
    views = ViewRecorder(lambda t: tracer.info(t).labels)
    names = {m: (n or "") for n, m in model.named_modules()}
    checks_input = {n for m, n in names.items() if input_width_attributes(m)}
    input_widths: dict[str, list[Label]] = {}
    handles = []

    def pre(mod, args):
        name = names.get(mod, tracer.module)
        tracer.stack.append(name)
        views.enter(name, mod)
        if name in tracer.norms.kinds and args and isinstance(args[0], torch.Tensor):
            tracer.norms.enter(name, tracer.info(args[0]).labels)
        if name in checks_input and name not in input_widths and args and isinstance(args[0], torch.Tensor):
            input_widths[name] = tracer.info(args[0]).labels

    def post(mod, args, output):
        if len(tracer.stack) > 1:
            tracer.stack.pop()
        views.exit()

    def enter_one_op(mod, args):
        tracer.inside_one_op += 1

    def exit_one_op(mod, args, kwargs, output):
        tracer.inside_one_op -= 1
        multihead.channel_rule(tracer, tracer.module, mod, args, kwargs, output)

    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        if multihead.traced_as_one_op(m):  # after ``pre``, before ``post``: the op runs in the module's name
            handles.append(m.register_forward_pre_hook(enter_one_op))
            handles.append(m.register_forward_hook(exit_one_op, with_kwargs=True))
        handles.append(m.register_forward_hook(post, always_call=True))
    was_training = model.training
    model.eval()
    try:
        flat_in = _tensors(tree_flatten(example_inputs)[0])
        if not flat_in:
            raise AnalysisError("example_inputs contain no tensor; pass e.g. torch.randn(1, 3, 224, 224)")
        input_labels: list[Label] = []
        for i, t in enumerate(flat_in):
            labels = [tracer.table.new_label(n, "model input") for n in t.shape]
            tracer.set(t, labels, op="input")
            input_labels.extend(labels)
        try:
            with torch.no_grad(), tracer, views:
                output = call_model(model, example_inputs)
        except AnalysisError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with context
            module, op = tracer.failed_at or (tracer.module, tracer.last_op)
            raise AnalysisError(
                f"Tracing {type(model).__name__} on example inputs of shape {_shapes(example_inputs)} failed "
                f"in module '{module or '<model>'}' ({tracer.module_class(module)}) at op {op or '<none>'}: "
                f"{type(e).__name__}: {e}"
            ) from e
        outputs = _tensors(tree_flatten(output if not hasattr(output, "to_tuple") else output.to_tuple())[0])
        if not outputs:
            raise AnalysisError(f"{type(model).__name__} returned no tensor on the example inputs")
        norms = tracer.norms.finish(tracer.table, tracer.param_labels, tracer.classes)
        tracer.finish_if_used(outputs)
        for o in outputs:
            for lab in tracer.infos[id(o)].labels if id(o) in tracer.infos else []:
                tracer.table.block_label(lab, "reaches the model output")
        # parameters never used in the forward pass keep their own (unconstrained) labels
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name not in tracer.param_labels and tracer.named.get(id(p)) == name:
                tracer.param_labels[name] = [tracer.table.new_label(n, "not used in forward") for n in p.shape]
                tracer.param_shapes[name] = tuple(p.shape)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelTrace(
        table=tracer.table,
        param_labels=tracer.param_labels,
        param_shapes=tracer.param_shapes,
        uses=tracer.uses,
        flop_ops=tracer.flop_ops,
        convs=tracer.convs,
        computed_weights=tracer.computed_weights,
        opaque_ops=tracer.opaque_ops,
        input_labels=input_labels,
        module_classes={n: type(m).__name__ for m, n in names.items()},
        head_labels=tracer.head_labels,
        standardized=tracer.standardized,
        norms=norms,
        views=views.calls,
        scalars=views.scalars,
        input_widths=input_widths,
    )
