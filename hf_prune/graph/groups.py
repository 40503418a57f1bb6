"""Pruning groups: the sets of (parameter, dimension) that share one channel index space.

A group is an undecomposed channel space that some conv/linear layer produces (its output channels).
Its members are every parameter dimension indexed by that space: producers (filters), consumers (input
channels of the next layers), norm parameters, per-channel scales. A group is prunable unless a stated
reason forbids it; every layer that cannot be pruned says why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from torch import nn

from ..errors import ScopeError
from ..text import did_you_mean
from .adapters import is_timm_model
from .spaces import SpaceTable
from .trace import ModelTrace


@dataclass(frozen=True)
class GroupMember:
    """One parameter dimension of a group; ``role`` is 'out' (filters), 'in' (inputs) or 'channel'."""

    param: str
    dim: int
    role: str

    @property
    def module(self) -> str:
        return self.param.rpartition(".")[0]


@dataclass
class PruningGroup:
    id: int
    space: int
    size: int
    members: list[GroupMember]
    prunable: bool
    reasons: list[str]
    flops: float  # dense FLOPs removed if the whole group were removed
    unit: int = 1  # kept channels are rounded to a multiple of this (in units of the group's index)
    attention: str | None = None  # the module whose attention heads the group's channels are (None: not heads)

    @property
    def producers(self) -> list[str]:
        return sorted({m.module for m in self.members if m.role == "out"})

    @property
    def consumers(self) -> list[str]:
        return sorted({m.module for m in self.members if m.role == "in"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "channels": self.size, "prunable": self.prunable, "reasons": self.reasons,
            "producers": self.producers, "consumers": self.consumers, "flops": self.flops,
            "attention_heads_of": self.attention,
            "members": [{"param": m.param, "dim": m.dim, "role": m.role} for m in self.members],
        }


@dataclass
class PruningPolicy:
    """NNCF's structural options (a subset of :class:`hf_prune.PruningConfig`)."""

    prune_first_conv: bool = False
    prune_downsample_convs: bool = False
    ignored_scopes: Sequence[str] = ()
    target_scopes: Sequence[str] = ()
    channel_multiple: int = 8
    validate_scopes: bool = True

    @classmethod
    def from_config(cls, config: Any) -> "PruningPolicy":
        if config is None:
            return cls()
        p = config.params
        return cls(p.prune_first_conv, p.prune_downsample_convs, list(config.ignored_scopes),
                   list(config.target_scopes), p.channel_multiple, config.validate_scopes)


_NNCF_OPS = {"Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d", "ConvTranspose2d": "conv_transpose2d",
             "ConvTranspose3d": "conv_transpose3d", "Linear": "linear"}
"""The op name NNCF appends to a layer's scope to name its graph node (``.../NNCFConv2d[conv1]/conv2d_0``)."""


def nncf_scopes(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Module name -> the names NNCF gives it: its scope ``ResNet/Sequential[layer1]/Conv2d[conv1]``, the
    same with NNCF's wrapped class (``NNCFConv2d``), and its graph node name (``.../NNCFConv2d[conv1]/conv2d_0``)."""
    root = type(model).__name__
    plain: dict[str, str] = {"": root}
    wrapped: dict[str, str] = {"": root}
    out: dict[str, tuple[str, ...]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        parent, _, attr = name.rpartition(".")
        cls = type(module).__name__
        op = _NNCF_OPS.get(cls)
        plain[name] = f"{plain[parent]}/{cls}[{attr}]"
        wrapped[name] = f"{wrapped[parent]}/{'NNCF' + cls if op else cls}[{attr}]"
        names = (plain[name], wrapped[name]) + ((f"{wrapped[name]}/{op}_0",) if op else ())
        out[name] = tuple(dict.fromkeys(names))
    return out


def _scope_matcher(scopes: Iterable[str], model: nn.Module, key: str, validate: bool = True):
    """Compile ``ignored_scopes``-style entries, NNCF's syntax included.

    An entry is a module name (covering its children), an NNCF scope or node name matched exactly
    (``ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]``), or ``{re}regex``: searched in the NNCF
    names of a layer (as NNCF does) or matching its whole module name. With ``validate`` an entry that
    matches nothing is an error naming the closest names.
    """
    names = nncf_scopes(model)
    modules = list(names)
    patterns = []
    for scope in scopes:
        if "{re}" in scope:
            rx = re.compile(scope.replace("{re}", ""))
            pattern = (lambda m, rx=rx: bool(rx.fullmatch(m)) or any(rx.search(n) for n in names[m]))
            kind = "regex"
        elif "/" in scope:
            pattern = (lambda m, s=scope: s in names[m])
            kind = "NNCF scope"
        else:
            pattern = (lambda m, s=scope: m == s or m.startswith(s + "."))
            kind = "module name"
        if validate and not any(pattern(m) for m in modules):
            pool = [n for m in modules for n in names[m][:1]] if kind == "NNCF scope" else modules
            hint = did_you_mean(scope.replace("{re}", ""), pool, n=5, cutoff=0.5)
            what = f"no module named {scope!r}" if kind == "module name" else f"{kind} {scope!r} matches no module"
            raise ScopeError(f"{key}: {what} in the model{hint} (validate_scopes: false allows it)")
        patterns.append(pattern)
    return lambda module: next((s for s, p in zip(scopes, patterns) if module in names and p(module)), None)


def build_groups(trace: ModelTrace, model: nn.Module, policy: PruningPolicy) -> list[PruningGroup]:
    """Groups of the traced model, prunable and not."""
    T = trace.table
    ignored = _scope_matcher(policy.ignored_scopes, model, "ignored_scopes", policy.validate_scopes)
    targeted = (_scope_matcher(policy.target_scopes, model, "target_scopes", policy.validate_scopes)
                if policy.target_scopes else None)
    heads = head_leaves(trace)
    head_roots = {T.find(s) for lab in trace.head_labels for s in lab}

    roles: dict[tuple[str, int], str] = {}
    for u in trace.uses:
        roles[(u.param, u.dim)] = u.role if roles.get((u.param, u.dim)) in (None, u.role) else "out"
    members: dict[int, list[GroupMember]] = {}
    for name, labels in trace.param_labels.items():
        for d, lab in enumerate(labels):
            for leaf in dict.fromkeys(T.leaves(lab)):
                members.setdefault(leaf, []).append(GroupMember(name, d, roles.get((name, d), "channel")))

    policy_reasons: dict[int, list[str]] = {}
    input_roots = {T.find(s) for lab in trace.input_labels for s in lab}
    for i, conv in enumerate(trace.convs):
        reason = None
        # a first conv reads the model's input; one that reads a single channel (a grayscale image) has
        # no channel space to follow, so the first conv the model runs counts as reading the input
        reads_input = any(T.find(s) in input_roots for s in conv.in_label) or (i == 0 and not conv.in_label)
        if not policy.prune_first_conv and reads_input:
            reason = f"first convolution {conv.module} (prune_first_conv=false)"
        elif not policy.prune_downsample_convs and conv.groups == 1 and any(s > 1 for s in conv.stride):
            reason = f"downsample convolution {conv.module} (stride {max(conv.stride)}; prune_downsample_convs=false)"
        if reason:
            for leaf in T.leaves(conv.out_label):
                policy_reasons.setdefault(leaf, []).append(reason)

    pools = _attention_pool_widths(trace, model)
    flops: dict[int, float] = {}
    for op in trace.flop_ops:
        for lab in op.labels:
            for leaf in dict.fromkeys(T.leaves(lab)):
                flops[leaf] = flops.get(leaf, 0.0) + op.flops * T.share(lab, leaf)

    groups: list[PruningGroup] = []
    for leaf, mems in members.items():
        if T.size(leaf) < 2 or not any(m.role == "out" for m in mems):
            continue
        reasons = T.reasons(leaf) + policy_reasons.get(leaf, [])
        reasons += _split_reasons(T, leaf, heads, head_roots, trace.module_classes)
        producers = sorted({m.module for m in mems if m.role == "out"})
        pool = pools.get(leaf)
        if pool is not None and all(p.startswith(pool[0] + ".") == pool[1] for p in producers):
            reasons.append(pool[2])
        for p in producers:
            hit = ignored(p)
            if hit is not None:
                reasons.append(f"{p} is in ignored_scopes ({hit!r})")
            if targeted is not None and targeted(p) is None:
                reasons.append(f"{p} is not in target_scopes")
        groups.append(PruningGroup(
            id=0, space=leaf, size=T.size(leaf), members=mems, prunable=not reasons, reasons=reasons,
            flops=flops.get(leaf, 0.0), unit=_rounding_unit(T, trace, leaf, mems, policy.channel_multiple),
            attention=_attention_module(T, leaf) if leaf in heads else None,
        ))
    order = {name: i for i, name in enumerate(trace.param_labels)}
    groups.sort(key=lambda g: min(order[m.param] for m in g.members if m.role == "out"))
    for i, g in enumerate(groups):
        g.id = i
    return groups


def _attention_pool_widths(trace: ModelTrace, model: nn.Module) -> dict[int, tuple[str, bool, str]]:
    """Channel spaces around the attention pool (``attn_pool``) of a timm model → (the pool's name, whether the
    reason applies to spaces the pool produces (else to those it reads), why they keep their width): timm's
    ``reset_classifier`` builds a classifier of ``embed_dim`` inputs, so the pool's output width (the
    classifier's input) and the residual width it reads must both stay what they are."""
    T = trace.table
    out: dict[int, tuple[str, bool, str]] = {}
    names: dict[nn.Module, str] = {}
    for path, m in model.named_modules():
        pool = getattr(m, "attn_pool", None)
        if not isinstance(pool, nn.Module) or type(getattr(m, "embed_dim", None)) is not int or not is_timm_model(m):
            continue
        names = names or {m: n for n, m in model.named_modules()}
        name, cls = names[pool], type(m).__name__
        why = (f"timm's {cls}.reset_classifier builds a classifier of embed_dim ({m.embed_dim}) inputs, which must "
               f"stay the width of the attention pool {name} ({type(pool).__name__}) and of the residual it reads")
        classifier = names.get(m.get_classifier()) if hasattr(m, "get_classifier") else None
        labels = trace.param_labels.get(f"{classifier}.weight") if classifier else None
        if labels is not None and len(labels) == 2:
            for leaf in T.leaves(labels[1]):
                out[leaf] = (name, True, f"output channels of {name}, the classifier's input: {why}")
        for u in trace.uses:
            if u.role == "in" and u.module.startswith(name + "."):
                for leaf in T.leaves(trace.param_labels[u.param][u.dim]):
                    out.setdefault(leaf, (name, False, f"channels read by {name}: {why}"))
    return out


def head_leaves(trace: ModelTrace) -> set[int]:
    """The channel spaces that are attention heads: batch dimensions of a per-head contraction."""
    T = trace.table
    return {leaf for lab in trace.head_labels for leaf in T.leaves(lab)}


def _attention_module(T: SpaceTable, leaf: int) -> str:
    """The module whose reshape split a head space from its projection's channels."""
    return next((d.site.module for _, d in T.ancestors(leaf) if d is not None and d.site.cause == "reshape"), "")


def _split_reasons(T: SpaceTable, leaf: int, heads: set[int], head_roots: set[int],
                   classes: dict[str, str]) -> list[str]:
    """Reasons from reshapes that split channels: only the heads of attention may be pruned through one."""
    reasons: list[str] = []
    if leaf in heads:
        if any(p in head_roots for p in T.parents(leaf)):  # a head space split into groups of heads
            reasons.append("attention heads are split into groups (grouped-query attention: query heads share "
                           "key/value heads), which are not pruned")
        return reasons
    for _, d in T.ancestors(leaf):
        if d is None or d.site.cause != "reshape":
            continue
        where = f"{d.site.module or '<model>'} ({classes.get(d.site.module, '?')})"
        if any(c in heads for c in T.leaves(tuple(d.children))):
            reason = f"channels inside the attention heads of {where}: only whole heads are pruned"
        else:
            reason = (f"channels are split by a reshape in {where}, which is not a split into attention heads "
                      "(heads are recognized by a per-head matmul or scaled_dot_product_attention)")
        if reason not in reasons:
            reasons.append(reason)
    return reasons


def _rounding_unit(T: SpaceTable, trace: ModelTrace, leaf: int, mems: list[GroupMember], multiple: int) -> int:
    """Round kept indices so that every producer keeps a multiple of ``multiple`` channels."""
    if multiple <= 1:
        return 1
    producer = next(m for m in mems if m.role == "out")
    label = trace.param_labels[producer.param][producer.dim]
    stride = max(1, round(T.label_size(label) * T.share(label, leaf) / T.size(leaf)))
    return multiple // math.gcd(multiple, stride)


def unprunable_layers(trace: ModelTrace, groups: list[PruningGroup]) -> dict[str, list[str]]:
    """Every conv/linear layer none of whose output channels can be pruned, with the reasons."""
    prunable_producers = {p for g in groups if g.prunable for p in g.producers}
    out: dict[str, list[str]] = {}
    for g in groups:
        if g.prunable:
            continue
        for p in g.producers:
            if p not in prunable_producers:
                out.setdefault(p, [])
                for r in g.reasons:
                    if r not in out[p]:
                        out[p].append(r)
    for module, reason in (trace.computed_weights | trace.opaque_ops).items():
        if module not in prunable_producers:
            out.setdefault(module, []).append(reason)
    producers_seen = {p for g in groups for p in g.producers} | set(trace.computed_weights) | set(trace.opaque_ops)
    for u in trace.uses:
        if u.role == "out" and u.module not in producers_seen:
            out.setdefault(u.param.rpartition(".")[0], []).append("its output channels form no group (single channel)")
    return dict(sorted(out.items()))
