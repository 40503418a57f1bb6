"""Proving each group strippable: a strip must give the outputs of the masked model, or it is excluded.

The tracer's rules are exact for the ops they know, but model code can hide a width in an attribute
(``x.reshape(B, -1, heads, 96)``, ``split([48, 32, 16])``). So before a group is offered, we remove a
little of every group at once, compare the zero-masked model with the physically stripped one on the
example inputs (normalizations over channels computed over the kept ones, as the masks make them), and
bisect to the groups responsible when they differ. Those are excluded with the
error as the stated reason: a strip never silently yields a different model.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from .adapters import Widths, probe_widths
from .groups import PruningGroup
from . import reshapes
from .norms import install_norm_hooks, norm_masks
from .surgery import clear_tensor_caches, shallow_copy, strip, zero_pruned
from .trace import ModelTrace, call_model

TOLERANCE = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-6)}
"""(relative, absolute) tolerance of stripped against masked outputs, by dtype (see
:func:`exclude_unstrippable` for when the check runs in float64)."""


def _outputs(out: Any) -> list[torch.Tensor]:
    out = out.to_tuple() if hasattr(out, "to_tuple") else out
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _probe_masks(groups: list[PruningGroup], head_units: int = 1) -> dict[int, torch.Tensor]:
    """Masks removing one unit of every group, ``head_units`` of attention heads (where a group has them)."""
    masks = {}
    for g in groups:
        keep = torch.ones(g.size, dtype=torch.bool)
        keep[max(1, g.size - g.unit * (head_units if g.attention is not None else 1)):] = False
        masks[g.space] = keep
    return masks


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, every module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model.eval()
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def _masked_outputs(model: nn.Module, trace: ModelTrace, masks: dict[int, torch.Tensor],
                    inputs: Any) -> list[torch.Tensor]:
    """Outputs of ``model`` with the channels ``masks`` prunes zeroed and normalizations over channels
    computed over the kept ones. Runs on ``model`` itself, its parameters swapped for zeroed copies for the
    call (no copy of the module tree); parameters and hooks are restored afterwards."""
    params = [(m, dict(m._parameters)) for m in model.modules()]
    handles = []
    try:
        zero_pruned(model, trace, masks, inplace=False)
        handles = install_norm_hooks(model, norm_masks(trace.table, trace.norms, masks))
        return _outputs(call_model(model, inputs))
    finally:
        for h in handles:
            h.remove()
        for m, saved in params:
            m._parameters.update(saved)


def _difference(model: nn.Module, trace: ModelTrace, groups: list[PruningGroup], inputs: Any,
                dense_widths: Widths, head_units: int = 1) -> str | None:
    """None if stripping a bit of ``groups`` (:func:`_probe_masks`) keeps the outputs of ``model`` (in eval
    mode), else what went wrong (``dense_widths``: :func:`.adapters.probe_widths` of ``model``)."""
    masks = _probe_masks(groups, head_units)
    try:
        expected = _masked_outputs(model, trace, masks, inputs)
        with torch.no_grad():
            stripped = strip(shallow_copy(model), trace, masks, dense_widths, every_view=True)  # from the dense weights
            got = _outputs(call_model(stripped, inputs))
            for module, calls in reshapes.resized_dims(stripped).items():
                for key, dims in calls.items():
                    trace.resized_views.setdefault(module, {}).setdefault(key, set()).update(dims)
    except Exception as e:  # noqa: BLE001 - the error becomes the group's stated reason
        return f"the stripped model fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return f"the stripped model's output shape changes from {tuple(a.shape)} to {tuple(b.shape)}"
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        rtol, atol = TOLERANCE.get(a.dtype, TOLERANCE[torch.float32])
        if diff > rtol * scale + atol:
            return f"the stripped model's outputs differ from the masked model's (max abs diff {diff:.2e})"
    return None


@contextmanager
def _widened(model: nn.Module, inputs: Any, wide: bool) -> Iterator[Any]:
    """With ``wide``, ``model`` in float64 and ``inputs`` in float64 (where the model runs so; else both as
    they are) for the duration; ``model``'s dtypes are restored and its caches of tensors emptied after."""
    if not wide:
        yield inputs
        return
    dtypes = {id(t): t.dtype for t in itertools.chain(model.parameters(), model.buffers())}
    wide_inputs = tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                           inputs)
    try:
        with torch.no_grad(), _eval_mode(model):
            call_model(model.double(), wide_inputs)
    except Exception:  # noqa: BLE001 - an op or a cast without float64: checked in the model's own dtype
        wide_inputs = None
    try:
        yield inputs if wide_inputs is None else wide_inputs
    finally:
        for t in itertools.chain(model.parameters(), model.buffers()):
            t.data = t.data.to(dtypes.get(id(t), t.dtype))
        clear_tensor_caches(model)  # filled in float64 (LeViT's attention biases)


def exclude_unstrippable(model: nn.Module, trace: ModelTrace, groups: list[PruningGroup], inputs: Any) -> None:
    """Mark groups whose strip is not exact as unprunable, with the reason (bisects on failure; where only a
    combination fails, narrows it to a minimal failing set, so that groups that strip exactly stay).

    With attention heads among the groups, runs in float64 where ``model`` does (its dtypes are restored
    after): a softmax over small logits hides a wrong scale in float32 rounding. Other models are checked in
    their dtype (float64 convolutions on a CPU are several times slower)."""
    candidates = [g for g in groups if g.prunable]
    if not candidates:
        return
    head_units = 1

    def difference(subset: list[PruningGroup]) -> str | None:
        return _difference(model, trace, subset, inputs, dense_widths, head_units)

    def exclude(group: PruningGroup, reason: str) -> None:
        group.prunable = False
        group.reasons.append(reason)

    def minimal(subset: list[PruningGroup]) -> list[PruningGroup]:
        culprits = list(subset)
        for g in subset:
            trial = [c for c in culprits if c is not g]
            if trial and difference(trial) is not None:
                culprits = trial
        return culprits

    def search(subset: list[PruningGroup], failure: str | None) -> None:
        if failure is None:
            return
        if len(subset) == 1:
            attention = subset[0].attention
            heads = f"the heads of {attention or '<model>'} cannot be removed: " if attention is not None else ""
            exclude(subset[0], f"strip check: {heads}{failure}")
            return
        half = len(subset) // 2
        left, right = subset[:half], subset[half:]
        fl, fr = difference(left), difference(right)
        if fl is None and fr is None:  # only fails in combination
            culprits = minimal(subset)
            for g in culprits:
                exclude(g, f"strip check (together with {len(culprits) - 1} other groups): {failure}")
        else:
            search(left, fl)
            search(right, fr)
        rest = [g for g in subset if g.prunable]  # what is left must also strip exactly together
        if rest:
            search(rest, difference(rest))

    trace.resized_views = {}
    wide = any(g.attention is not None for g in candidates)
    with _widened(model, inputs, wide) as inputs, _eval_mode(model):
        dense_widths = probe_widths(model)  # the dense model's, the same for every strip below
        search(candidates, difference(candidates))
        # Where some code computes a size from widths, again with two heads removed per attention module:
        # where the embedding width and the head count shrink in proportion (a residual unit of one head's
        # width), ``C // num_heads`` is right by chance, in other modules of the same model too.
        head_units = 2
        rest = [g for g in candidates if g.prunable]
        if trace.resized_views and any(g.attention is not None for g in rest):
            search(rest, difference(rest))
