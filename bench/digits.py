"""Training helpers for the accuracy benchmarks on the embedded digits data (no download)."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import common  # noqa: F401 - puts the repo root on sys.path
import hf_prune
from hf_prune.algorithm.bn_adaptation import adapt_batchnorm
from hf_prune.app.data import DigitsSplits, load_digits
from hf_prune.model_kind import takes_pixel_values

IMAGE_SIZE = 32


def data() -> DigitsSplits:
    return load_digits(image_size=IMAGE_SIZE)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x) if takes_pixel_values(model) else model(x)
    return out.logits if hasattr(out, "logits") else out


def train_epoch(model: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                extra_loss: Callable[[], torch.Tensor] | None = None, max_steps: int | None = None) -> None:
    model.train()
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        loss = F.cross_entropy(logits(model, batch["pixel_values"]), batch["labels"])
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a digits split."""
    model.eval()
    x = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    out = logits(model, x)
    return float((out.argmax(-1) == dataset.labels).float().mean()), float(F.cross_entropy(out, dataset.labels))


def recalibrate(model: torch.nn.Module, splits: DigitsSplits) -> None:
    """Re-estimate BatchNorm statistics on the training set (hf_prune's BN adaptation)."""
    adapt_batchnorm(model, loader(splits.train, seed=7), len(splits.train))


def loader(dataset: Any, seed: int = 0, batch_size: int = 64) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def train_dense(model: torch.nn.Module, splits: DigitsSplits, epochs: int, lr: float) -> torch.nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for e in range(epochs):
        train_epoch(model, loader(splits.train, e), opt)
    return model


def prune_and_finetune(dense: torch.nn.Module, splits: DigitsSplits, config: dict[str, Any], epochs: int, lr: float,
                       before_training: Callable[[Any], None] | None = None) -> tuple[torch.nn.Module, Any]:
    """A copy of ``dense`` pruned on the config's schedule while fine-tuned for ``epochs``, then stripped."""
    model = copy.deepcopy(dense)
    example = splits.train[0]["pixel_values"][None]
    ctrl = hf_prune.create_pruning_controller(
        model, config, example_inputs={"pixel_values": example} if takes_pixel_values(model) else example)
    if before_training is not None:
        before_training(ctrl)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for e in range(epochs):
        ctrl.scheduler.epoch_step()
        train_epoch(model, loader(splits.train, 100 + e), opt, ctrl.loss)
    return ctrl.strip_model(model), ctrl
