"""Proving each group strippable: a strip must give the outputs of the masked model, or it is excluded.

The tracer's rules are exact for the ops they know, but model code can hide a width in an attribute
(``x.reshape(B, -1, heads, 96)``, ``split([48, 32, 16])``). So before a group is offered, we remove a
little of every group at once, compare the zero-masked model with the physically stripped one on the
example inputs (normalizations over channels computed over the kept ones, as the masks make them), and
bisect to the groups responsible when they differ. Those are excluded with the
error as the stated reason: a strip never silently yields a different model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .groups import PruningGroup
from .norms import install_norm_hooks, norm_masks
from .surgery import shallow_copy, strip, zero_pruned
from .trace import ModelTrace, call_model

RTOL = 1e-4


def _outputs(out: Any) -> list[torch.Tensor]:
    out = out.to_tuple() if hasattr(out, "to_tuple") else out
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _probe_masks(groups: list[PruningGroup]) -> dict[int, torch.Tensor]:
    masks = {}
    for g in groups:
        keep = torch.ones(g.size, dtype=torch.bool)
        keep[max(1, g.size - g.unit):] = False
        masks[g.space] = keep
    return masks


def _difference(model: nn.Module, trace: ModelTrace, groups: list[PruningGroup], inputs: Any) -> str | None:
    """None if stripping a bit of ``groups`` keeps the outputs, else what went wrong."""
    masks = _probe_masks(groups)
    try:
        with torch.no_grad():
            zeroed = zero_pruned(shallow_copy(model).eval(), trace, masks, inplace=False)
            install_norm_hooks(zeroed, norm_masks(trace.table, trace.norms, masks))  # statistics over kept channels
            expected = _outputs(call_model(zeroed, inputs))
            stripped = strip(shallow_copy(model).eval(), trace, masks)  # from the dense weights, not the zeroed
            got = _outputs(call_model(stripped, inputs))
    except Exception as e:  # noqa: BLE001 - the error becomes the group's stated reason
        return f"the stripped model fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return f"the stripped model's output shape changes from {tuple(a.shape)} to {tuple(b.shape)}"
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff > RTOL * max(scale, 1e-6) + 1e-6:
            return f"the stripped model's outputs differ from the masked model's (max abs diff {diff:.2e})"
    return None


def exclude_unstrippable(model: nn.Module, trace: ModelTrace, groups: list[PruningGroup], inputs: Any) -> None:
    """Mark groups whose strip is not exact as unprunable, with the reason (bisects on failure)."""
    candidates = [g for g in groups if g.prunable]

    def search(subset: list[PruningGroup], failure: str | None) -> None:
        if failure is None:
            return
        if len(subset) == 1:
            attention = subset[0].attention
            heads = f"the heads of {attention or '<model>'} cannot be removed: " if attention is not None else ""
            subset[0].prunable = False
            subset[0].reasons.append(f"strip check: {heads}{failure}")
            return
        half = len(subset) // 2
        left, right = subset[:half], subset[half:]
        fl, fr = _difference(model, trace, left, inputs), _difference(model, trace, right, inputs)
        if fl is None and fr is None:  # only fails in combination: exclude the whole subset
            for g in subset:
                g.prunable = False
                g.reasons.append(f"strip check (together with other groups): {failure}")
            return
        search(left, fl)
        search(right, fr)

    if candidates:
        search(candidates, _difference(model, trace, candidates, inputs))
