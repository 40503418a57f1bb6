"""hf_prune: NNCF-style filter pruning for timm and Hugging Face vision models, with a real strip.

Public names are imported on first use (PEP 562), so ``import hf_prune`` costs little more than
``import torch``: transformers, timm, accelerate and ONNX Runtime load with the API that needs them.
Importing hf_prune does register, at once, the strip hook that records a stripped model's shapes and
(as soon as transformers' quantization machinery is imported) the loader that lets
``AutoModel*.from_pretrained`` and ``pipeline`` reload stripped transformers models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .integrations import serialization as _serialization  # registers the strip hook and the loader (see register_hooks)

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "FilterPruningController": "algorithm.controller", "PrunedModuleInfo": "algorithm.controller",
    "create_pruning_controller": "algorithm.controller",
    "PruningStatistics": "algorithm.statistics",
    "LegrParams": "config", "PruningArguments": "config", "PruningConfig": "config", "PruningConfigError": "config",
    "PruningParams": "config",
    "AnalysisError": "errors", "HfPruneError": "errors", "NothingPrunableError": "errors",
    "PruningLevelError": "errors", "PruningStateError": "errors", "ScopeError": "errors",
    "ModelAnalysis": "graph.analysis", "analyze_model": "graph.analysis",
    "register_op_variant": "graph.canonical", "register_channel_rule": "graph.trace",
    "PruningGroup": "graph.groups", "PruningPolicy": "graph.groups",
    "AcceleratedPruner": "integrations.accelerate",
    "push_to_hub": "integrations.hub",
    "OnnxExportError": "integrations.onnx", "export_onnx": "integrations.onnx",
    "PrunedModelError": "integrations.serialization", "from_pretrained": "integrations.serialization",
    "load_pruning_controller": "integrations.serialization", "save_pretrained": "integrations.serialization",
    "save_pruning_state": "integrations.serialization",
    "PruningCallback": "integrations.trainer", "PruningTrainer": "integrations.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # names for type checkers and IDEs
    from .algorithm.controller import FilterPruningController, PrunedModuleInfo, create_pruning_controller
    from .algorithm.statistics import PruningStatistics
    from .config import LegrParams, PruningArguments, PruningConfig, PruningConfigError, PruningParams
    from .errors import (
        AnalysisError, HfPruneError, NothingPrunableError, PruningLevelError, PruningStateError, ScopeError,
    )
    from .graph.analysis import ModelAnalysis, analyze_model
    from .graph.canonical import register_op_variant
    from .graph.groups import PruningGroup, PruningPolicy
    from .graph.trace import register_channel_rule
    from .integrations.accelerate import AcceleratedPruner
    from .integrations.hub import push_to_hub
    from .integrations.onnx import OnnxExportError, export_onnx
    from .integrations.serialization import (
        PrunedModelError, from_pretrained, load_pruning_controller, save_pretrained, save_pruning_state,
    )
    from .integrations.trainer import PruningCallback, PruningTrainer
