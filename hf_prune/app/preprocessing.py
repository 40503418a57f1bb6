"""Each model's own preprocessing: timm's data config for timm models, ``AutoImageProcessor`` for transformers.

Training images are augmented (random resized crop and flip; timm adds its default colour jitter), evaluation
images resized and center-cropped, both normalized with the statistics the model was trained with. A recipe
may override the image size, the statistics, or turn augmentation off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from ..model_kind import library_of

logger = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875

Transform = Callable[[Any], Any]
"""An RGB PIL image → a (C, H, W) float tensor."""


@dataclass
class ImageTransforms:
    """The train and eval transforms of one model, and the settings they were built from."""

    train: Transform
    eval: Transform
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where the settings came from, for logs and reports


def transforms_for(model: nn.Module, image_size: int | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, augment: bool = True) -> ImageTransforms:
    """The train/eval transforms ``model`` expects; ``image_size``, ``mean``, ``std`` override its own."""
    if library_of(model) == "timm":
        return _timm_transforms(model, image_size, mean, std, augment)
    return _transformers_transforms(model, image_size, mean, std, augment)


def _timm_transforms(model: nn.Module, image_size: int | None, mean, std, augment: bool) -> ImageTransforms:
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    if image_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], image_size, image_size)
    if mean is not None:
        cfg["mean"] = tuple(mean)
    if std is not None:
        cfg["std"] = tuple(std)
    evaluation = create_transform(**cfg, is_training=False)
    train = create_transform(**cfg, is_training=True) if augment else evaluation
    return ImageTransforms(train, evaluation, cfg["input_size"][-1], tuple(cfg["mean"]), tuple(cfg["std"]),
                           "timm data config")


def _processor_settings(model: nn.Module) -> tuple[int | None, tuple | None, tuple | None, str]:
    """(size, mean, std, source) from the model's ``AutoImageProcessor`` where one can be loaded."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or getattr(model, "name_or_path", "")
    if not name:
        return None, None, None, "ImageNet defaults (model built from a config, no image processor)"
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:
        logger.warning("no image processor for %s (%s); using ImageNet statistics", name, str(exc).splitlines()[0])
        return None, None, None, f"ImageNet defaults (no image processor for {name})"
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"height": size}
    edge = size.get("height") or size.get("shortest_edge")
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    return edge, tuple(mean) if mean else None, tuple(std) if std else None, f"AutoImageProcessor of {name}"


def _transformers_transforms(model: nn.Module, image_size: int | None, mean, std, augment: bool) -> ImageTransforms:
    from torchvision import transforms as T

    size, p_mean, p_std, source = _processor_settings(model)
    config = getattr(model, "config", None)
    config_size = getattr(config, "image_size", None)
    size = image_size or size or (config_size if isinstance(config_size, int) else None) or 224
    mean = tuple(mean or p_mean or IMAGENET_MEAN)
    std = tuple(std or p_std or IMAGENET_STD)
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    evaluation = T.Compose([T.Resize(int(size / DEFAULT_CROP_PCT)), T.CenterCrop(size), *normalize])
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *normalize]) if augment else evaluation
    return ImageTransforms(train, evaluation, size, mean, std, source)
