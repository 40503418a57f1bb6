"""ONNX export, checked against PyTorch with ONNX Runtime.

Two exporters, one contract (``output_dir/model.onnx``, input ``pixel_values`` with a dynamic batch
axis, and dynamic height and width where the model allows, the class logits as first output):

- Optimum's (``pip install hf_prune[optimum]``, transformers 4.57), used where it is installed and knows the
  model's architecture (transformers model types it has no ONNX config for go through torch.onnx). It infers
  the library (transformers or timm) from the model's class, which a strip keeps. The export runs on a
  shallow copy (Optimum gives timm models a ``config`` attribute; the copy's ``pretrained_cfg`` also
  carries the model's current input size, which Optimum's dummy inputs follow).
- torch.onnx's dynamo exporter (``pip install hf_prune[onnx]``, any transformers) otherwise. The
  TorchScript-based exporter is deprecated since torch 2.9; the dynamo exporter is torch's default,
  is what torch maintains, and exports transformers 5 models as they are written.

Optimum, onnxscript and ONNX Runtime are imported on first export: they take seconds, which
``import hf_prune`` should not.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..algorithm.controller import FilterPruningController
from ..errors import HfPruneError
from ..graph.surgery import shallow_copy
from ..model_kind import input_size, random_images
from .serialization import ensure_stripped, from_pretrained, logits, model_library

__all__ = ["OnnxExportError", "check_onnx", "export_onnx", "exporter"]

ONNX_NAME = "model.onnx"
CHECK_BATCH = 3
"""Batch size of the ONNX Runtime check; it differs from the export's (2) to exercise the dynamic axis."""


class OnnxExportError(HfPruneError, RuntimeError):
    """An ONNX export failed, or ONNX Runtime's outputs differ from PyTorch's (names the largest difference)."""


def _exportable(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` in eval mode, its timm ``pretrained_cfg`` sized to its current input."""
    exportable = shallow_copy(model).eval()
    if model_library(exportable) == "timm":
        exportable.pretrained_cfg = {**exportable.pretrained_cfg, "input_size": input_size(model)}
    return exportable


def export_onnx(model_or_dir: nn.Module | str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
                controller: FilterPruningController | None = None, opset: int | None = None,
                task: str = "image-classification", rtol: float = 1e-4, atol: float = 1e-4) -> Path:
    """Export a transformers or timm model (or a directory :func:`~hf_prune.from_pretrained` reads) to
    ``output_dir/model.onnx`` (Optimum's exporter where installed and it knows the architecture, else
    torch.onnx), then check ONNX Runtime against PyTorch.

    A model whose masks are still active is stripped first (a copy; ``controller`` required). Raises
    :class:`OnnxExportError` when the outputs differ beyond ``rtol``/``atol`` (see :func:`check_onnx`).
    Returns the path of the ONNX file.
    """
    if isinstance(model_or_dir, (str, os.PathLike)):
        model = from_pretrained(model_or_dir)
    else:
        model = ensure_stripped(model_or_dir, controller, "export")
    output = Path(output_dir)
    if exporter() == "optimum" and _optimum_exports(model, task):
        _export_optimum(model, output, task, opset)
    else:
        _export_torch(model, output, opset)
    path = output / ONNX_NAME
    check_onnx(model, path, rtol=rtol, atol=atol)
    return path


def exporter() -> str:
    """``"optimum"`` where Optimum's ONNX exporter is installed, else ``"torch"`` (torch.onnx, dynamo)."""
    try:
        found = importlib.util.find_spec("optimum.exporters.onnx") is not None
    except ModuleNotFoundError:  # no optimum at all
        found = False
    return "optimum" if found else "torch"


def _optimum_exports(model: nn.Module, task: str) -> bool:
    """Whether Optimum has an ONNX config for ``model``'s architecture and ``task`` (a transformers model
    type it does not know, e.g. DINOv2 with registers, MobileViTV2, TimmWrapper, goes through torch.onnx)."""
    if model_library(model) != "transformers":
        return True
    from optimum.exporters.onnx import onnx_export_from_model  # noqa: F401  (registers Optimum's ONNX configs)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model.config.model_type, exporter="onnx",
                                                                library_name="transformers")
    except KeyError:
        return False
    return task in tasks


def _export_optimum(model: nn.Module, output: Path, task: str, opset: int | None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    exportable = _exportable(model)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as preprocessor_dir:
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # Optimum uses torch's TorchScript-based exporter
        _give_image_processor(exportable, preprocessor_dir)
        try:
            onnx_export_from_model(exportable, output=output, task=task, opset=opset, do_validation=False)
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            raise OnnxExportError(f"Optimum could not export {type(model).__name__} to {output}: {exc}") from exc


def _give_image_processor(model: nn.Module, directory: str) -> None:
    """Some of Optimum's dummy-input generators (DINOv2's) read an image processor from the directory the
    config was loaded from and fail when there is none (a model built from a config, or saved without its
    processor): point the copy's config at ``directory`` holding one sized to the model's input."""
    config = getattr(model, "config", None)
    if model_library(model) != "transformers" or config is None:
        return
    from optimum.utils.save_utils import maybe_load_preprocessors

    if config._name_or_path and maybe_load_preprocessors(config._name_or_path):
        return
    from transformers import BitImageProcessor

    _, height, width = input_size(model)
    BitImageProcessor(size={"height": height, "width": width}, crop_size={"height": height, "width": width},
                      do_center_crop=True).save_pretrained(directory)
    model.config = copy.deepcopy(config)
    model.config._name_or_path = directory


class _Logits(nn.Module):
    """``pixel_values`` → class logits, for transformers and timm models alike."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return logits(self.model, pixel_values)


def _export_torch(model: nn.Module, output: Path, opset: int | None) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise OnnxExportError("ONNX export needs onnxscript (torch.onnx's exporter) or Optimum: "
                              "pip install 'hf_prune[onnx]' or 'hf_prune[optimum]'")
    output.mkdir(parents=True, exist_ok=True)
    example = random_images(model, 2)
    auto = torch.export.Dim.AUTO
    # dynamic batch, height and width where the model allows; a model whose shapes torch.export cannot
    # solve for a symbolic height and width (MobileViTV2's unfolding) is exported for its own size
    for dims in ({0: auto, 2: auto, 3: auto}, {0: auto}):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(_Logits(_exportable(model)), (example,), dynamo=True,
                                            opset_version=opset, input_names=["pixel_values"],
                                            output_names=["logits"], dynamic_shapes={"pixel_values": dims},
                                            verbose=False)
                program.save(str(output / ONNX_NAME))
            return
        except Exception as exc:  # torch.export and onnxscript raise many error types
            error = exc
    raise OnnxExportError(f"torch.onnx could not export {type(model).__name__} to {output}: {error}") from error


@torch.no_grad()
def check_onnx(model: nn.Module, onnx_path: str | os.PathLike[str], *, batch_size: int = CHECK_BATCH,
               rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Run ``onnx_path`` in ONNX Runtime and ``model`` in PyTorch on one random batch; return the largest
    absolute difference of the logits, or raise :class:`OnnxExportError` if they differ by more than
    ``atol`` × (largest PyTorch logit, at least 1) + ``rtol`` × |logit|."""
    pixel_values = random_images(model, batch_size)
    was_training = model.training
    expected = logits(model.eval(), pixel_values).numpy()
    model.train(was_training)
    import onnxruntime as ort

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
