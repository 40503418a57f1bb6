"""``analyze_model``: trace once, then groups, reasons and the FLOPs model of a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AnalysisError
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

    def group(self, group_id: int) -> PruningGroup:
        return self.groups[group_id]

    def to_dict(self) -> dict[str, Any]:
        total = self.dense_flops or 1.0
        return {
            "model": self.model_class,
            "flops": self.dense_flops,
            "params": self.dense_params,
            "groups": [dict(g.to_dict(), flops_share=g.flops / total) for g in self.groups],
            "unprunable_layers": self.unprunable_layers,
        }


def default_example_inputs(model: nn.Module) -> Any:
    """Example inputs from a timm ``pretrained_cfg`` or a transformers vision config."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return torch.randn(1, *cfg["input_size"])
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "image_size", None) is not None:
        size = config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return {"pixel_values": torch.randn(1, getattr(config, "num_channels", 3), *size)}
    raise AnalysisError(
        f"Cannot infer example inputs for {type(model).__name__}: pass example_inputs, "
        "e.g. torch.randn(1, 3, 224, 224) or {'pixel_values': ...}"
    )


def analyze_model(model: nn.Module, example_inputs: Any = None, policy: PruningPolicy | None = None,
                  verify: bool = True) -> ModelAnalysis:
    """Trace ``model`` once and find its pruning groups under ``policy`` (NNCF defaults if None).

    With ``verify`` (default), every offered group is proven strippable on the example inputs (see
    :mod:`hf_prune.graph.verify`); groups that fail are excluded with the failure as their reason.
    """
    if not isinstance(model, nn.Module):
        raise AnalysisError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    trace = trace_model(model, example_inputs)
    groups = build_groups(trace, model, policy or PruningPolicy())
    if verify:
        exclude_unstrippable(model, trace, groups, example_inputs)
    params = {n for n, p in model.named_parameters()}
    return ModelAnalysis(type(model).__name__, trace, groups, unprunable_layers(trace, groups), FlopsModel(trace),
                         params, example_inputs)
