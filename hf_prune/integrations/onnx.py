"""ONNX export, checked against PyTorch with ONNX Runtime.

Two exporters, one contract (``output_dir/model.onnx``, input ``pixel_values`` with a dynamic batch
axis, and dynamic height and width where the model allows and the caller does not ask for a fixed size, the
class logits as first output; a model that takes other inputs, SigLIP-2's patches with their mask and shapes
or ImageGPT's ``input_ids``, is exported for the ``example_inputs`` it is given, each with a dynamic batch
axis, through torch.onnx):

- Optimum's (``pip install hf_prune[optimum]``, transformers 4.57), used where it is installed and knows the
  model's architecture (transformers model types it has no ONNX config for, and timm models whose output is
  not (batch, classes), go through torch.onnx). It infers
  the library (transformers or timm) from the model's class, which a strip keeps. The export runs on a
  shallow copy (Optimum gives timm models a ``config`` attribute; the copy's ``pretrained_cfg`` also
  carries the model's current input size, which Optimum's dummy inputs follow).
- torch.onnx's dynamo exporter (``pip install hf_prune[onnx]``, any transformers) otherwise. The
  TorchScript-based exporter is deprecated since torch 2.9; the dynamo exporter is torch's default,
  is what torch maintains, and exports transformers 5 models as they are written. While it traces, the
  calls it translates wrongly or not at all are made in a form it translates, with the same results
  (:class:`_Translatable`); a graph its optimizer breaks is exported unoptimized (:func:`_unregistered_inputs`).

Optimum, onnxscript and ONNX Runtime are imported on first export: they take seconds, which
``import hf_prune`` should not.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..algorithm.controller import FilterPruningController
from ..errors import HfPruneError
from ..graph.record import model_library
from ..graph.surgery import shallow_copy
from ..model_kind import input_size, random_images
from .serialization import class_scores, ensure_stripped, from_pretrained, logits

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
                task: str = "image-classification", example_inputs: Mapping[str, torch.Tensor] | None = None,
                dynamic_image_size: bool = True, rtol: float = 1e-4, atol: float = 1e-4) -> Path:
    """Export a transformers or timm model (or a directory :func:`~hf_prune.from_pretrained` reads) to
    ``output_dir/model.onnx`` (Optimum's exporter where installed and it knows the architecture, else
    torch.onnx), then check ONNX Runtime against PyTorch.

    ``example_inputs``: the keyword inputs of a transformers model that takes more than ``pixel_values``
    images (its processor's output, e.g. ``{"pixel_values", "pixel_attention_mask", "spatial_shapes"}``); the
    ONNX model takes them by these names, each with a dynamic batch axis. ``dynamic_image_size=False`` exports
    for the model's own image size, through torch.onnx, with only the batch dynamic: torch.export then solves no
    symbolic height and width, which takes minutes on models that pad to window multiples at every stage (DaViT,
    SAM2's Hiera, NASNet; seconds with a fixed size). A model whose masks are still active
    is stripped first (a copy; ``controller`` required). Raises :class:`OnnxExportError` when the outputs differ
    beyond ``rtol``/``atol`` (see :func:`check_onnx`). Returns the path of the ONNX file.
    """
    if isinstance(model_or_dir, (str, os.PathLike)):
        model = from_pretrained(model_or_dir)
    else:
        model = ensure_stripped(model_or_dir, controller, "export")
    output = Path(output_dir)
    if example_inputs is None and dynamic_image_size and exporter() == "optimum" and _optimum_exports(model, task):
        _export_optimum(model, output, task, opset)  # Optimum fixes every axis or none: not for a fixed size
    else:
        _export_torch(model, output, opset, example_inputs, dynamic_image_size)
    path = output / ONNX_NAME
    check_onnx(model, path, example_inputs=example_inputs, rtol=rtol, atol=atol)
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
    type it does not know, e.g. DINOv2 with registers, MobileViTV2, TimmWrapper, goes through torch.onnx).
    Optimum exports a timm model as a classifier, (batch, classes): a timm model with other outputs (gemma4's
    encoder: (batch, tokens, dim)) goes through torch.onnx, as Optimum then runs its export with an input
    named ``x`` where it named the model's input ``pixel_values`` ("Required inputs (['pixel_values']) are
    missing from input feed (['x'])")."""
    if model_library(model) == "timm":
        with torch.no_grad():
            return logits(_exportable(model), random_images(model, 1)).dim() == 2
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
    """``pixel_values`` (or the named inputs, in order) → class logits, for transformers and timm models alike."""

    def __init__(self, model: nn.Module, names: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return logits(self.model, inputs[0])
        return class_scores(self.model(**dict(zip(self.names, inputs))))


def _batch_of(inputs: Mapping[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """``inputs`` (a batch) repeated to ``size`` rows, floating-point values made different per row."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name, t in inputs.items():
        rows = t.repeat(-(-size // len(t)), *([1] * (t.dim() - 1)))[:size]
        if rows.is_floating_point():
            rows = rows + 0.1 * torch.randn(rows.shape, generator=generator, dtype=rows.dtype)
        out[name] = rows
    return out


def _four_dim_attention(func: Callable[..., torch.Tensor], query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attn_mask: torch.Tensor | None = None, *args: Any,
                        **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with 4-D query, key and value, all torch.onnx translates ("only 4D
    query, key, and value are supported"): the batch dimensions before the heads are flattened into one
    (hiera, nest, twins: batch × windows) or one is added (SAM's 3-D windowed attention), a mask with such
    dimensions is expanded alike, and the result is reshaped back. Every attention row is computed as before."""
    rank = query.dim()
    if rank == 4 or rank < 3 or key.dim() != rank or value.dim() != rank:
        return func(query, key, value, attn_mask, *args, **kwargs)
    batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3],
                                   () if attn_mask is None else attn_mask.shape[:-3])

    def four_dims(t: torch.Tensor) -> torch.Tensor:
        return t.expand(*batch, *t.shape[-3:]).reshape(-1, *t.shape[-3:])

    if attn_mask is not None and attn_mask.dim() > 3:  # a mask of at most 3 dims broadcasts as it did
        attn_mask = four_dims(attn_mask)
    out = func(four_dims(query), four_dims(key), four_dims(value), attn_mask, *args, **kwargs)
    return out.reshape(*batch, *out.shape[-3:])


def _repeat_interleave(func: Callable[..., torch.Tensor], input: torch.Tensor, repeats: Any,
                       dim: int | None = None, **kwargs: Any) -> torch.Tensor:
    """``repeat_interleave`` with one number of repeats as a broadcast and a reshape: torch.onnx (onnxscript
    0.7) translates a symbolic number (gcvit's ``q_global.repeat_interleave(B // q_global.shape[0], 0)``)
    into an ``Expand`` along the wrong axis, which ONNX Runtime refuses for a batch above 1."""
    if isinstance(repeats, torch.Tensor):  # one count per element
        return func(input, repeats, dim, **kwargs)
    if dim is None:
        input, dim = input.reshape(-1), 0
    dim %= input.dim()
    shape = input.shape
    expanded = input.unsqueeze(dim + 1).expand(*shape[:dim + 1], repeats, *shape[dim + 1:])
    return expanded.reshape(*shape[:dim], -1, *shape[dim + 1:])


class _Translatable(TorchFunctionMode):
    """While torch.onnx traces a model, calls the functions it translates wrongly or not at all
    (:data:`_REWRITES`) in a way it translates, with the same result. The model is not changed."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        rewrite = _REWRITES.get(func)
        if rewrite is None:
            return func(*args, **(kwargs or {}))
        return rewrite(func, *args, **(kwargs or {}))


_REWRITES: dict[Callable[..., Any], Callable[..., torch.Tensor]] = {
    F.scaled_dot_product_attention: _four_dim_attention,
    torch.repeat_interleave: _repeat_interleave,
    torch.Tensor.repeat_interleave: _repeat_interleave,
}


def _export_torch(model: nn.Module, output: Path, opset: int | None,
                  example_inputs: Mapping[str, torch.Tensor] | None = None, dynamic_image_size: bool = True) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise OnnxExportError("ONNX export needs onnxscript (torch.onnx's exporter) or Optimum: "
                              "pip install 'hf_prune[onnx]' or 'hf_prune[optimum]'")
    output.mkdir(parents=True, exist_ok=True)
    auto = torch.export.Dim.AUTO
    if example_inputs is None:
        names, example = ["pixel_values"], (random_images(model, 2),)
        # dynamic batch, height and width where the model allows; a model whose shapes torch.export cannot
        # solve for a symbolic height and width (MobileViTV2's unfolding) is exported for its own size
        choices = [{"pixel_values": {0: auto, 2: auto, 3: auto}}] if dynamic_image_size else []
        choices.append({"pixel_values": {0: auto}})
    else:
        names, example = list(example_inputs), tuple(_batch_of(example_inputs, 2).values())
        choices = [{name: {0: auto} for name in names}]
    wrapper = _Logits(_exportable(model), None if example_inputs is None else names)
    for dims in choices:
        try:
            with torch.no_grad(), warnings.catch_warnings(), _Translatable(), _without_runtime_checks():
                warnings.simplefilter("ignore")
                for optimize in (True, False):
                    program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                                input_names=names, output_names=["logits"],
                                                dynamic_shapes={"inputs": tuple(dims.values())}, optimize=optimize,
                                                verbose=False)
                    if not _unregistered_inputs(program.model.graph):
                        break
            program.save(str(output / ONNX_NAME))
            return
        except Exception as exc:  # torch.export and onnxscript raise many error types
            error = exc
    raise OnnxExportError(f"torch.onnx could not export {type(model).__name__} to {output}: {error}") from error


@contextlib.contextmanager
def _without_runtime_checks() -> Iterator[None]:
    """transformers' own switch for its ``torch._check`` assertions on input values (SigLIP-2's patch grid
    sizes), which torch.onnx cannot translate (``aten._is_all_true``) and ONNX cannot express."""
    saved = os.environ.get(_NO_CHECKS)
    os.environ[_NO_CHECKS] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[_NO_CHECKS]
        else:
            os.environ[_NO_CHECKS] = saved


_NO_CHECKS = "TRANSFORMERS_DISABLE_TORCH_CHECK"


def _unregistered_inputs(graph: Any) -> list[str]:
    """Names of the node inputs of an ONNX IR ``graph`` that are neither computed, nor graph inputs, nor
    initializers. torch.onnx's graph optimizer (onnxscript 0.7) leaves some constants it creates so when it
    fuses several ``Min``/``Max`` pairs on one input into ``Clip`` nodes (timm's gemma4 clamps each
    attention input three times), as the names of its new initializers collide (microsoft/onnxscript#2079):
    ONNX Runtime then refuses the model ("... is not a graph input, initializer, or output of a previous
    node"), and the model is exported unoptimized (ONNX Runtime optimizes it when it loads it)."""
    import onnx_ir as ir

    return [value.name for node in ir.traversal.RecursiveGraphIterator(graph) for value in node.inputs
            if value is not None and value.producer() is None and not value.is_graph_input()
            and not value.is_initializer()]


@torch.no_grad()
def check_onnx(model: nn.Module, onnx_path: str | os.PathLike[str], *, batch_size: int = CHECK_BATCH,
               example_inputs: Mapping[str, torch.Tensor] | None = None, rtol: float = 1e-4,
               atol: float = 1e-4) -> float:
    """Run ``onnx_path`` in ONNX Runtime and ``model`` in PyTorch on one random batch (of images, or of
    ``example_inputs``' rows); return the largest absolute difference of the logits, or raise
    :class:`OnnxExportError` if they differ by more than ``atol`` × (largest PyTorch logit, at least 1) +
    ``rtol`` × |logit|."""
    was_training = model.training
    model.eval()
    if example_inputs is None:
        batch = {"pixel_values": random_images(model, batch_size)}
        expected = logits(model, batch["pixel_values"]).numpy()
    else:
        batch = _batch_of(example_inputs, batch_size)
        expected = class_scores(model(**batch)).numpy()
    model.train(was_training)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # Optimum's and torch.onnx's image input names differ
    feed = {names[0]: batch["pixel_values"].numpy()} if example_inputs is None else \
        {name: batch[name].numpy() for name in names}
    actual = session.run(None, feed)[0]
    if actual.shape != expected.shape:
        raise OnnxExportError(f"{onnx_path}: ONNX Runtime returned logits of shape {actual.shape}, "
                              f"PyTorch {expected.shape}")
    diff = float(np.abs(actual - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not np.allclose(actual, expected, rtol=rtol, atol=atol * scale):
        raise OnnxExportError(f"{onnx_path}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} "
                              f"(tolerance {atol * scale:.3g} + {rtol:g}×|logit|)")
    return diff
