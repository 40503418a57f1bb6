"""hf_prune: NNCF-style filter pruning for timm and Hugging Face vision models, with a real strip."""

from .algorithm.controller import FilterPruningController, PrunedModuleInfo, create_pruning_controller
from .algorithm.statistics import PruningStatistics
from .config import LegrParams, PruningConfig, PruningConfigError, PruningParams
from .errors import AnalysisError, HfPruneError, NothingPrunableError, PruningLevelError, ScopeError
from .graph.analysis import ModelAnalysis, analyze_model
from .graph.canonical import register_op_variant
from .graph.groups import PruningGroup, PruningPolicy
from .integrations.accelerate import AcceleratedPruner
from .integrations.distributed import PruningStateError
from .integrations.hub import push_to_hub
from .integrations.onnx import OnnxExportError, export_onnx
from .integrations.serialization import (
    PrunedModelError, from_pretrained, load_pruning_controller, save_pretrained, save_pruning_state,
)
from .integrations.trainer import PruningCallback, PruningTrainer

__version__ = "0.1.0"

__all__ = [
    "AcceleratedPruner", "AnalysisError", "FilterPruningController", "PruningCallback", "PruningStateError",
    "PruningTrainer", "HfPruneError", "LegrParams", "ModelAnalysis",
    "PrunedModuleInfo", "PruningConfig", "PruningConfigError", "PruningGroup", "PruningLevelError",
    "PruningParams", "PruningPolicy", "PruningStatistics", "ScopeError", "analyze_model",
    "create_pruning_controller", "export_onnx", "from_pretrained", "load_pruning_controller", "push_to_hub",
    "save_pretrained", "save_pruning_state", "OnnxExportError", "PrunedModelError", "NothingPrunableError",
    "register_op_variant",
]
