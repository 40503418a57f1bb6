"""Masks in the forward pass, without touching the stored weights (NNCF semantics).

A pruned channel is silenced where it is *consumed*: the input-channel columns of the next conv/linear
weights are multiplied by the mask for the duration of each forward call of the module that uses them (the
layer itself, or the module whose code passes the layer's weight to ``F.linear``, as timm BEiT's attention).
Everything between producer and consumer is per-channel, so a pruned channel then influences nothing: the
model computes exactly what the stripped model will, and pruned filters receive zero gradient. Parameters
stay the same objects with the same names, so ``state_dict``, optimizers, DDP and checkpoints are unaffected.

A normalization whose statistics run over pruned channels (LayerNorm, RMSNorm, GRN) computes them over the
kept channels only while masks are active (:mod:`hf_prune.graph.norms`), as its stripped self will.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..graph.analysis import remove_forward_hooks
from ..graph.trace import ParamUse
from ..graph.norms import NormMaskHook, NormRecord
from ..graph.standardization import standardized_preimage


class _MaskHook:
    """Forward pre/post hooks swapping weights for their masked versions during the forward of the module that
    uses them (``targets``: parameter name → (module owning it, its attribute)).

    Masks are updated in place (:meth:`update`), never replaced: a ``torch.compile``d model reads the same
    mask tensors in every call, so new masks take effect without recompiling (dynamo does not guard on
    module hooks, so hooks swapped after compilation would be silently ignored).
    """

    transparent_to_analysis = True  # the analysis traces the model without its masks

    def __init__(self, targets: dict[str, tuple[nn.Module, str]], masks: dict[str, torch.Tensor],
                 standardized: dict[str, float]) -> None:
        self.targets = targets
        self.masks = masks
        self.standardized = standardized  # parameter → eps, for weights standardized in forward
        self.saved: dict[str, nn.Parameter] = {}
        self._placed: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def mask_for(self, name: str, p: torch.Tensor) -> torch.Tensor:
        key = (name, p.device, p.dtype)
        m = self._placed.get(key)
        if m is None:
            m = self._placed[key] = self.masks[name].to(device=p.device, dtype=p.dtype)
        return m

    def update(self, masks: dict[str, torch.Tensor]) -> None:
        """New values for the same masks, copied into every tensor already placed on a device."""
        self.masks = masks
        for (name, _, _), placed in self._placed.items():
            placed.copy_(masks[name], non_blocking=True)

    @property
    def prunes(self) -> bool:
        """Whether any mask removes something (all-ones masks leave the forward pass unchanged)."""
        return any(not bool(m.all()) for m in self.masks.values())

    def pre(self, module: nn.Module, args) -> None:
        for name, (owner, attr) in self.targets.items():
            p = owner._parameters[attr]
            self.saved[name] = p
            mask = self.mask_for(name, p)
            eps = self.standardized.get(name)
            owner._parameters[attr] = p * mask if eps is None else standardized_preimage(p, mask, eps)

    def post(self, module: nn.Module, args, output) -> None:
        for name, p in self.saved.items():
            owner, attr = self.targets[name]
            owner._parameters[attr] = p
        self.saved.clear()


class WeightMasker:
    """Installs and updates the consumer-side weight masks of a model."""

    def __init__(self) -> None:
        self._hooks: dict[nn.Module, tuple[_MaskHook, list]] = {}
        self._norm_hooks: dict[str, tuple[NormMaskHook, RemovableHandle]] = {}

    def apply(self, model: nn.Module, masks: dict[str, torch.Tensor], standardized: dict[str, float] | None = None,
              norms: dict[str, tuple[NormRecord, torch.Tensor]] | None = None,
              users: dict[str, str] | None = None) -> None:
        """Mask each named parameter (``{"layer.weight": broadcastable 0/1 mask}``) and compute each named
        normalization over its kept channels (``{"block.norm1": (record, kept-channel mask)}``). Masks of the
        same parameters and norms as before are updated in place; another set replaces the hooks.
        ``users`` names the module whose forward uses a parameter where it is not the parameter's own
        (:func:`parameter_users`).
        ``standardized`` (parameter → eps) names weights standardized per filter in forward: they are given
        their :func:`~hf_prune.graph.standardization.standardized_preimage` instead of being zeroed."""
        self._apply_weights(model, masks, standardized or {}, users or {})
        self._apply_norms(model, norms or {})

    def _apply_weights(self, model: nn.Module, masks: dict[str, torch.Tensor], standardized: dict[str, float],
                       users: dict[str, str]) -> None:
        by_module: dict[nn.Module, dict[str, torch.Tensor]] = {}
        targets: dict[nn.Module, dict[str, tuple[nn.Module, str]]] = {}
        eps: dict[nn.Module, dict[str, float]] = {}
        for full_name, mask in masks.items():
            module_name, _, pname = full_name.rpartition(".")
            owner = model.get_submodule(module_name)
            module = model.get_submodule(users.get(full_name, module_name))
            by_module.setdefault(module, {})[full_name] = mask
            targets.setdefault(module, {})[full_name] = (owner, pname)
            if full_name in standardized:
                eps.setdefault(module, {})[full_name] = standardized[full_name]
        same = by_module.keys() == self._hooks.keys() and all(
            module_masks.keys() == self._hooks[module][0].masks.keys() for module, module_masks in by_module.items())
        if same:
            for module, module_masks in by_module.items():
                self._hooks[module][0].update(module_masks)
            return
        self._remove_weights()
        for module, module_masks in by_module.items():
            hook = _MaskHook(targets[module], module_masks, eps.get(module, {}))
            handles = [module.register_forward_pre_hook(hook.pre),
                       module.register_forward_hook(hook.post, always_call=True)]
            self._hooks[module] = (hook, handles)

    def _apply_norms(self, model: nn.Module, norms: dict[str, tuple[NormRecord, torch.Tensor]]) -> None:
        if norms.keys() == self._norm_hooks.keys():
            for name, (_, mask) in norms.items():
                self._norm_hooks[name][0].update(mask)
            return
        self._remove_norms()
        for name, (record, mask) in norms.items():
            hook = NormMaskHook(record, mask)
            self._norm_hooks[name] = (hook, model.get_submodule(name).register_forward_hook(hook.post))

    def _remove_norms(self) -> None:
        for _, handle in self._norm_hooks.values():
            handle.remove()
        self._norm_hooks.clear()

    def _remove_weights(self) -> None:
        for hook, handles in self._hooks.values():
            for h in handles:
                h.remove()
        self._hooks.clear()

    def remove(self) -> None:
        self._remove_weights()
        self._remove_norms()


def parameter_users(uses: Iterable[ParamUse]) -> dict[str, str]:
    """Parameter → the innermost module whose forward runs every op using it, where that is not the module
    owning it (a weight passed to ``F.linear`` by its parent's code)."""
    modules: dict[str, set[str]] = {}
    for u in uses:
        modules.setdefault(u.param, set()).add(u.module)
    out = {}
    for param, users in modules.items():
        paths = [m.split(".") if m else [] for m in users]
        common = next((i for i, parts in enumerate(zip(*paths)) if len(set(parts)) > 1), min(map(len, paths)))
        user = ".".join(paths[0][:common])
        if user != param.rpartition(".")[0]:
            out[param] = user
    return out


def remove_mask_hooks(model: nn.Module) -> None:
    """Drop hf_prune mask hooks from a model (e.g. from a deep copy that inherited them)."""
    remove_forward_hooks(model, lambda owner: isinstance(owner, (_MaskHook, NormMaskHook)))
