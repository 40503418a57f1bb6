"""What a model is and what it takes: its library (transformers or timm), its input size, example inputs.

Every wing asks these questions here, so that "is this a transformers model?" has one answer: an
instance of ``transformers.PreTrainedModel``. A timm model carries a ``pretrained_cfg`` naming its
architecture. Any other module is called on an image tensor, as timm models are.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from .errors import AnalysisError

__all__ = ["DEFAULT_INPUT_SIZE", "example_inputs", "images_of", "input_size", "library_of", "random_images",
           "saved_library", "takes_pixel_values"]

Library = Literal["transformers", "timm"]
DEFAULT_INPUT_SIZE = (3, 224, 224)
"""(channels, height, width) of a transformers model whose config has no ``image_size`` (convnets)."""


def library_of(model: nn.Module) -> Library | None:
    """``"transformers"``, ``"timm"``, or None for any other module."""
    transformers = sys.modules.get("transformers")  # no transformers model exists before transformers is imported
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return "transformers"
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and "architecture" in cfg:
        return "timm"
    return None


def saved_library(config: Mapping[str, Any]) -> Library | None:
    """The library a saved ``config.json`` is read by: ``"transformers"`` where it has a ``model_type``
    (transformers' ``TimmWrapperConfig`` included), ``"timm"`` for timm's Hub config (an ``architecture``
    and no ``model_type``), None otherwise."""
    if "model_type" in config:
        return "transformers"
    return "timm" if "architecture" in config else None


def takes_pixel_values(model: nn.Module) -> bool:
    """Whether ``model`` is called as transformers image models are, ``model(pixel_values=..., labels=...)``:
    every transformers model, and any module whose ``forward`` takes a ``pixel_values`` keyword."""
    if library_of(model) == "transformers":
        return True
    try:
        return "pixel_values" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) ``model`` takes: timm's current input config, or a transformers config's
    ``image_size`` (its ``vision_config``'s for CLIP / SigLIP; 224 for convnets whose config has none).
    :class:`AnalysisError` for other modules."""
    library = library_of(model)
    if library == "timm":
        from timm.models._input import get_model_input_config

        return tuple(get_model_input_config(model)["input_size"])
    if library == "transformers":
        config = getattr(model.config, "vision_config", None) or model.config  # CLIP, SigLIP: a vision tower's
        size = getattr(config, "image_size", None) or DEFAULT_INPUT_SIZE[1]
        height, width = size if isinstance(size, (list, tuple)) else (size, size)
        return getattr(config, "num_channels", DEFAULT_INPUT_SIZE[0]), height, width
    raise AnalysisError(f"cannot infer the input size of {type(model).__name__} (neither a transformers nor a timm "
                        "model): pass example_inputs, e.g. torch.randn(1, 3, 224, 224)")


def random_images(model: nn.Module, batch: int = 1, size: int | tuple[int, ...] | None = None,
                  generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> torch.Tensor:
    """A batch of random images of ``size``: (C, H, W), an int for square images with the model's channels,
    or None for :func:`input_size`. ``generator`` seeds the values; ``like``: a tensor whose device and dtype
    they take."""
    if isinstance(size, int):
        size = (input_size(model)[0], size, size)
    x = torch.randn(batch, *(size or input_size(model)), generator=generator)
    return x if like is None else x.to(like.device, like.dtype)


def example_inputs(model: nn.Module, batch: int = 1, size: int | tuple[int, ...] | None = None,
                   generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> Any:
    """:func:`random_images` as ``model`` takes them: ``{"pixel_values": x}`` for models that take
    ``pixel_values`` (:func:`takes_pixel_values`), ``x`` otherwise."""
    x = random_images(model, batch, size, generator, like)
    return {"pixel_values": x} if takes_pixel_values(model) else x


def images_of(inputs: Any) -> torch.Tensor:
    """The image tensor of example inputs or a batch: ``inputs["pixel_values"]`` or ``inputs`` itself."""
    return inputs["pixel_values"] if isinstance(inputs, Mapping) else inputs
