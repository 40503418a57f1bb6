"""ONNX export through Optimum's exporter, checked against PyTorch with ONNX Runtime.

Optimum infers the library (transformers or timm) from the model's class, which a strip keeps. The
export runs on a shallow copy (Optimum gives timm models a ``config`` attribute; the copy's
``pretrained_cfg`` also carries the model's current input size, which Optimum's dummy inputs follow).
Optimum is imported on first export: it takes seconds, which ``import hf_prune`` should not.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..algorithm.controller import FilterPruningController
from ..errors import HfPruneError
from ..graph.surgery import shallow_copy
from .serialization import ensure_stripped, from_pretrained, input_size, logits, model_library

__all__ = ["OnnxExportError", "check_onnx", "export_onnx"]

ONNX_NAME = "model.onnx"
CHECK_BATCH = 3
"""Batch size of the ONNX Runtime check; it differs from the export's (2) to exercise the dynamic axis."""


class OnnxExportError(HfPruneError, RuntimeError):
    """An ONNX export failed, or ONNX Runtime's outputs differ from PyTorch's (names the largest difference)."""


def _exportable(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` in eval mode, its timm ``pretrained_cfg`` sized to its current input."""
    copy = shallow_copy(model).eval()
    if model_library(copy) == "timm":
        copy.pretrained_cfg = {**copy.pretrained_cfg, "input_size": input_size(model)}
    return copy


def export_onnx(model_or_dir: nn.Module | str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
                controller: FilterPruningController | None = None, opset: int | None = None,
                task: str = "image-classification", rtol: float = 1e-4, atol: float = 1e-4) -> Path:
    """Export a transformers or timm model (or a directory :func:`~hf_prune.from_pretrained` reads) to
    ``output_dir/model.onnx`` through Optimum, then check ONNX Runtime against PyTorch.

    A model whose masks are still active is stripped first (a copy; ``controller`` required). Raises
    :class:`OnnxExportError` when the outputs differ beyond ``rtol``/``atol`` (see :func:`check_onnx`).
    Returns the path of the ONNX file.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    if isinstance(model_or_dir, (str, os.PathLike)):
        model = from_pretrained(model_or_dir)
    else:
        model = ensure_stripped(model_or_dir, controller, "export")
    output = Path(output_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # Optimum uses torch's TorchScript-based exporter
        try:
            onnx_export_from_model(_exportable(model), output=output, task=task, opset=opset, do_validation=False)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise OnnxExportError(f"Optimum could not export {type(model).__name__} to {output}: {exc}") from exc
    path = output / ONNX_NAME
    check_onnx(model, path, rtol=rtol, atol=atol)
    return path


@torch.no_grad()
def check_onnx(model: nn.Module, onnx_path: str | os.PathLike[str], *, batch_size: int = CHECK_BATCH,
               rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Run ``onnx_path`` in ONNX Runtime and ``model`` in PyTorch on one random batch; return the largest
    absolute difference of the logits, or raise :class:`OnnxExportError` if they differ by more than
    ``atol`` × (largest PyTorch logit, at least 1) + ``rtol`` × |logit|."""
    pixel_values = torch.randn(batch_size, *input_size(model))
    was_training = model.training
    expected = logits(model.eval(), pixel_values).numpy()
    model.train(was_training)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})[0]
    if actual.shape != expected.shape:
        raise OnnxExportError(f"{onnx_path}: ONNX Runtime returned logits of shape {actual.shape}, "
                              f"PyTorch {expected.shape}")
    diff = float(np.abs(actual - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not np.allclose(actual, expected, rtol=rtol, atol=atol * scale):
        raise OnnxExportError(f"{onnx_path}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} "
                              f"(tolerance {atol * scale:.3g} + {rtol:g}×|logit|)")
    return diff
