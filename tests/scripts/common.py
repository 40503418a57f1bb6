"""Tiny models, data and settings shared by the integration tests and their multi-process scripts."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments, set_seed

from hf_prune.app.data import DigitsSplits, load_digits

IMAGE_SIZE = 16
PRUNING = {"params": {"pruning_target": 0.5, "pruning_steps": 2, "channel_multiple": 4}}
"""Half the filters, reached at epoch 1, masks frozen from epoch 2."""


def tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    """A two-stage bottleneck transformers ResNet (9k parameters) with four prunable groups."""
    set_seed(seed)
    return ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck", num_labels=10))


def digits(limit: int | None = 256) -> DigitsSplits:
    return load_digits(image_size=IMAGE_SIZE, limit=limit)


def training_args(output_dir: str | os.PathLike[str], **overrides: Any) -> TrainingArguments:
    """Quiet CPU arguments: epoch-wise logging, no reporting integrations, no checkpoints unless asked."""
    defaults: dict[str, Any] = dict(
        num_train_epochs=3, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=3e-3,
        logging_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0)
    return TrainingArguments(str(output_dir), **{**defaults, **overrides})


def masks_of(controller) -> dict[int, torch.Tensor]:
    return {gid: m.clone() for gid, m in controller.group_masks().items()}
