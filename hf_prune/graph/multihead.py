"""``nn.MultiheadAttention``: its heads and widths pruned like any other attention's.

torch's module computes its head width from the query's width and asserts that the query, the heads and the
output all have one width (``embed_dim``), and at inference it runs a fused kernel the trace cannot see into.
So the trace takes one call of such a module as a single op with :func:`channel_rule`: the query/key/value
projections' rows split into ``3 × num_heads × head_dim``, the heads contracted per head and merged back by
``out_proj``; the query, key and value widths are the projections' inputs, the output width ``out_proj``'s
rows. A stripped module whose widths torch's forward can no longer compute becomes a
:class:`PrunedMultiheadAttention` (same parameters, same state dict, ``isinstance`` still holds), whose forward
takes every width from its tensors (:func:`refresh`, run by the strip and by a reload).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .spaces import Label, Site

if TYPE_CHECKING:
    from .trace import _Tracer

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def traced_as_one_op(module: nn.Module) -> bool:
    """Whether the trace takes a call of ``module`` as one op: torch's own forward or this module's."""
    return type(module).forward in (nn.MultiheadAttention.forward, PrunedMultiheadAttention.forward)


def _projections(m: nn.MultiheadAttention) -> list[torch.Tensor]:
    """The input projection weights: the packed ``in_proj_weight`` (rows: query, key, value) or q, k, v."""
    return [m.in_proj_weight] if m._qkv_same_embed_dim else [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose query, key, value, head and output widths may all differ: what a strip
    leaves of one. Same parameters and semantics (masks, ``need_weights``, ``bias_k``, ``add_zero_attn``,
    dropout, ``batch_first``, unbatched inputs); widths come from the tensors, ``head_dim`` stays the dense one."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError(f"{type(self).__name__}: is_causal=True needs the causal attn_mask it describes")
        causal = is_causal and key_padding_mask is None and not need_weights  # torch then uses SDPA's own mask
        attn_mask = None if causal else attn_mask
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length = query.shape[:2]
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, -1)], dim=1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(k.shape[:2] + (1, self.head_dim))], dim=2)
            v = torch.cat([v, v.new_zeros(v.shape[:2] + (1, self.head_dim))], dim=2)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        mask = self._mask(attn_mask, key_padding_mask, n, length, k.shape[2], q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            weights = F.dropout(weights, p=dropout) if dropout > 0.0 else weights
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = F.linear(out.transpose(1, 2).flatten(2), self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _project(self, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        if not self._qkv_same_embed_dim:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        elif query is key and key is value:  # self-attention: one matmul
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            weights = self.in_proj_weight.chunk(3)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, length: int,
              source: int, dtype: torch.dtype) -> torch.Tensor | None:
        """One additive float mask ``(n | 1, heads | 1, length, source)`` (boolean masks: True is not attended)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            mask = mask.view(n, self.num_heads, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _pad(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask with one more source position, attended (the appended ``bias_k`` or zero key)."""
    return F.pad(mask, (0, 1)) if mask is not None else None


class PrunedTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """An ``nn.TransformerEncoderLayer`` whose attention is a :class:`PrunedMultiheadAttention`: it always runs the
    layer's unfused path (torch's fused kernel assumes one width for the query, the heads and the output)."""

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


def _torch_computes(module: nn.MultiheadAttention) -> bool:
    """Whether torch's own forward computes ``module`` as its tensors are: one width for query, heads and output."""
    return _projections(module)[0].shape[1] == module.out_proj.weight.shape[1] == module.out_proj.weight.shape[0]


def refresh(module: nn.Module) -> None:
    """After a strip or a reload's narrowing: an ``nn.MultiheadAttention``'s ``embed_dim``, ``kdim``, ``vdim`` and
    ``num_heads`` set from its tensors, and where torch's forward cannot compute its widths it becomes a
    :class:`PrunedMultiheadAttention`, an ``nn.TransformerEncoderLayer`` around it a
    :class:`PrunedTransformerEncoderLayer`, and an ``nn.TransformerEncoder`` of such layers stops packing its
    inputs into nested tensors (a path for the fused kernel only)."""
    if isinstance(module, nn.MultiheadAttention):
        weights = _projections(module)
        module.embed_dim = weights[0].shape[1]
        module.kdim, module.vdim = (module.embed_dim,) * 2 if module._qkv_same_embed_dim else (
            weights[1].shape[1], weights[2].shape[1])
        module.num_heads = module.out_proj.weight.shape[1] // module.head_dim
        if type(module) is nn.MultiheadAttention and not _torch_computes(module):
            module.__class__ = PrunedMultiheadAttention
    elif type(module) is nn.TransformerEncoderLayer and not _torch_computes(module.self_attn):
        module.__class__ = PrunedTransformerEncoderLayer
    elif isinstance(module, nn.TransformerEncoder):
        layers = [layer for layer in module.layers if isinstance(layer, nn.TransformerEncoderLayer)]
        if not all(_torch_computes(layer.self_attn) for layer in layers):
            module.use_nested_tensor = False


def head_counts(modules: dict[str, nn.Module]) -> dict[str, int]:
    """``num_heads`` of every ``nn.MultiheadAttention`` among ``modules`` (by name)."""
    return {name: m.num_heads for name, m in modules.items() if isinstance(m, nn.MultiheadAttention)}


def follow_head_counts(modules: dict[str, nn.Module], before: dict[str, int]) -> None:
    """The parent of each ``nn.MultiheadAttention`` whose head count changed from ``before``: its integer attributes
    named like a head count holding the old count take the new one (SigLIP-2's attention pool repeats its mask
    ``num_heads`` times for its ``nn.MultiheadAttention``)."""
    for name, old in before.items():
        new = modules[name].num_heads
        parent = modules.get(name.rpartition(".")[0]) if name else None
        if new == old or parent is None:
            continue
        for attr, value in vars(parent).items():
            if "head" in attr and type(value) is int and value == old:
                setattr(parent, attr, new)


# ------------------------------------------------------------------------------------------------ the trace
def channel_rule(tracer: _Tracer, name: str, module: nn.MultiheadAttention, args: tuple, kwargs: dict,
                 output: Any) -> None:
    """Label one call's outputs and join its parameters' channel spaces (see the module docstring)."""
    from .trace import FlopOp

    call = _SIGNATURE.bind(module, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    query, key, value = a["query"], a["key"], a["value"]
    table, where = tracer.table, f"nn.MultiheadAttention {name or '<model>'}"
    heads, per_head = module.num_heads, module.head_dim
    site = Site("reshape", name)
    info = {t: tracer.info(t) for t in (query, key, value)}
    split: list[list[Label] | None] = []
    weights = _projections(module)
    blocks = 3 if module._qkv_same_embed_dim else 1
    for w, x in zip(weights, (query, key, value) if blocks == 1 else (query,)):
        labels = tracer.info(w).labels
        split.append(_heads(tracer, labels[0], blocks, heads, per_head, site, where))
        for t in (query, key, value) if blocks == 3 else (x,):
            table.unify(labels[1], info[t].labels[-1])
        tracer._use(tracer.info(w), labels[0], "out")
        tracer._use(tracer.info(w), labels[1], "in")
    for bias, n in ((module.in_proj_bias, 3), (module.bias_k, 1), (module.bias_v, 1)):
        if bias is not None:
            split.append(_heads(tracer, tracer.info(bias).labels[-1], n, heads, per_head, site, where))
    out_w = tracer.info(module.out_proj.weight)
    split.append(_heads(tracer, out_w.labels[1], 1, heads, per_head, site, where))
    tracer._use(out_w, out_w.labels[0], "out")
    tracer._use(out_w, out_w.labels[1], "in")
    out_label = out_w.labels[0]
    if module.out_proj.bias is not None:
        out_label = table.unify(out_label, tracer.info(module.out_proj.bias).labels[0])
    attention, weights_out = output
    if any(s is None for s in split):
        reason = f"not split into {heads} heads of {per_head} channels in {where}"
        tracer.block_all([query, key, value, *weights, module.out_proj.weight], reason)
        tracer.set(attention, tracer.fresh(attention, reason), op=where)
        if isinstance(weights_out, torch.Tensor):
            tracer.set(weights_out, tracer.fresh(weights_out, f"attention weights of {where}"), op=where)
        return
    head, channel = split[0]
    for h, c in split[1:]:
        head, channel = table.unify(head, h), table.unify(channel, c)
    tracer.head_labels.append(head)
    mask = a["attn_mask"]
    if isinstance(mask, torch.Tensor) and mask.dim() == 3:
        table.block_label(head, f"the attn_mask given to {where} has one matrix per head")
    tracer.set(attention, list(info[query].labels[:-1]) + [out_label], op=where)
    if isinstance(weights_out, torch.Tensor):
        labels = tracer.fresh(weights_out, f"attention weights of {where}")
        if a["average_attn_weights"]:
            tracer.block_if_used(weights_out, head, f"the attention weights {where} returns, averaged over its "
                                                    "heads (need_weights=True), are used")
        else:
            labels[weights_out.dim() - 3] = head
        tracer.set(weights_out, labels, op=where)
    batch, length = _batch_and_length(query, module.batch_first)
    source = _batch_and_length(key, module.batch_first)[1]
    inner = heads * per_head
    for x, n in ((query, length), (key, source), (value, source)):
        tracer.flop_ops.append(FlopOp(where, name, 2 * batch * n * x.shape[-1] * inner,
                                      [info[x].labels[-1], head, channel]))
    source += int(module.bias_k is not None) + int(module.add_zero_attn)  # keys appended after the projection
    tracer.flop_ops.append(FlopOp(where, name, 4 * batch * length * source * inner, [head, channel]))
    tracer.flop_ops.append(FlopOp(where, name, 2 * batch * length * inner * module.out_proj.weight.shape[0],
                                  [head, channel, out_label]))


def _batch_and_length(x: torch.Tensor, batch_first: bool) -> tuple[int, int]:
    if x.dim() == 2:
        return 1, x.shape[0]
    return (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])


def _heads(tracer: _Tracer, label: Label, blocks: int, heads: int, per_head: int, site: Site,
           where: str) -> list[Label] | None:
    """``label`` split into (heads, channels per head), after ``blocks`` query/key/value blocks (kept whole)."""
    parts = tracer.table.split(label, ([blocks] if blocks > 1 else []) + [heads, per_head], site)
    if parts is None:
        return None
    if blocks > 1:
        tracer.table.block_label(parts[0], f"the query, key and value blocks of {where}")
    return parts[-2:]
