"""``analyze_model``: trace once, then groups, reasons and the FLOPs model of a model."""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import AnalysisError
from ..model_kind import example_inputs as default_inputs
from .flops import FlopsModel
from .groups import PruningGroup, PruningPolicy, build_groups, unprunable_layers
from .trace import ModelTrace, trace_model
from .verify import exclude_unstrippable


@dataclass
class ModelAnalysis:
    """The pruning structure of one model."""

    model_class: str
    trace: ModelTrace
    groups: list[PruningGroup]
    unprunable_layers: dict[str, list[str]]
    flops_model: FlopsModel
    params: set[str]  # names of trainable parameters (buffers excluded)
    example_inputs: Any = None

    @property
    def prunable_groups(self) -> list[PruningGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def dense_flops(self) -> float:
        return self.flops_model.dense_flops

    @property
    def dense_params(self) -> float:
        return self.flops_model.params(trainable_only=self.params)

    def to_dict(self) -> dict[str, Any]:
        total = self.dense_flops or 1.0
        return {
            "model": self.model_class,
            "flops": self.dense_flops,
            "params": self.dense_params,
            "groups": [dict(g.to_dict(), flops_share=g.flops / total) for g in self.groups],
            "unprunable_layers": self.unprunable_layers,
        }


def model_device(model: nn.Module) -> torch.device:
    """The one device holding ``model``'s parameters and buffers (CPU for a model without any).

    Raises :class:`AnalysisError` for a model on the ``meta`` device or split across devices.
    """
    name = type(model).__name__
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    if any(d.type == "meta" for d in devices):
        raise AnalysisError(
            f"{name} has parameters on the meta device (created under init_empty_weights, device_map='meta' or "
            "from_pretrained(..., low_cpu_mem_usage=True) without weights): load its weights, e.g. "
            "model.to_empty(device='cpu') then load_state_dict, before pruning it")
    dispatched = sorted({str(getattr(m._hf_hook, "execution_device", "?"))
                         for m in model.modules() if hasattr(m, "_hf_hook")})
    if len(devices) > 1 or len(dispatched) > 1:
        where = ", ".join(sorted(str(d) for d in devices | set(dispatched)))
        raise AnalysisError(
            f"{name} is split across devices ({where}), e.g. by device_map='auto': pruning needs the whole model "
            "on one device; load it without device_map and move it with model.to(device)")
    return next(iter(devices), torch.device("cpu"))


def _cpu_float32(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t``, with half-precision floats (fp16, bf16, fp8) widened to float32."""
    low = t.is_floating_point() and torch.finfo(t.dtype).bits < 32
    return t.detach().to("cpu", torch.float32 if low else t.dtype, copy=True)


def canonical_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` with the same module and parameter names, made without a second copy
    on the model's own device. The analysis traces this copy, so what it decides cannot depend on the
    device, the dtype or the kernels the model would run with (see :mod:`.canonical` for the op variants)."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        copy_ = _cpu_float32(t)
        memo[id(t)] = nn.Parameter(copy_, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else copy_
    with torch.no_grad():
        copied = copy.deepcopy(model, memo)
    remove_forward_hooks(copied, lambda owner: getattr(owner, "transparent_to_analysis", False))
    return copied


def remove_forward_hooks(model: nn.Module, owned_by: Callable[[Any], bool]) -> None:
    """Drop the forward (pre-)hooks of every module of ``model`` whose bound object satisfies ``owned_by``
    (e.g. a pruning controller's mask hooks: the analysis looks at the unmasked model)."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if owned_by(getattr(h, "__self__", None))]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)


def canonical_inputs(inputs: Any) -> Any:
    """``inputs`` on the CPU, half-precision tensors as float32 (the analysis copy's device and dtype)."""
    return tree_map(lambda x: _cpu_float32(x) if isinstance(x, torch.Tensor) else x, inputs)


def analyze_model(model: nn.Module, example_inputs: Any = None, policy: PruningPolicy | None = None,
                  verify: bool = True) -> ModelAnalysis:
    """Trace ``model`` once and find its pruning groups under ``policy`` (NNCF defaults if None).

    The trace runs on a float32 CPU copy of ``model`` with CPU float32 inputs, without autocast: groups,
    FLOPs and the strip proof are the same wherever the model lives and whatever its dtype. With ``verify``
    (default), every offered group is proven strippable on the example inputs (see
    :mod:`hf_prune.graph.verify`); groups that fail are excluded with the failure as their reason.
    """
    if not isinstance(model, nn.Module):
        raise AnalysisError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model_device(model)
    if example_inputs is None:
        example_inputs = default_inputs(model)
    inputs = canonical_inputs(example_inputs)
    copy_ = canonical_copy(model)
    with torch.autocast("cpu", enabled=False), _cuda_autocast_disabled():
        trace = trace_model(copy_, inputs)
        groups = build_groups(trace, copy_, policy or PruningPolicy())
        if verify:
            exclude_unstrippable(copy_, trace, groups, inputs)
    params = {n for n, p in model.named_parameters()}
    return ModelAnalysis(type(model).__name__, trace, groups, unprunable_layers(trace, groups), FlopsModel(trace),
                         params, inputs)


def _cuda_autocast_disabled() -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()
