"""Tiny models, data and settings shared by the integration tests and their multi-process scripts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, TrainerCallback, TrainingArguments, set_seed

from hf_prune.app.data import DigitsSplits, load_digits

IMAGE_SIZE = 16
PRUNING = {"params": {"pruning_target": 0.5, "pruning_steps": 2, "channel_multiple": 4}}
"""Half the filters, reached at epoch 1, masks frozen from epoch 2."""


@pytest.fixture
def single_thread():
    """One intra-op thread while a test trains: two test workers on two cores stay out of each other's way
    (oversubscribed threads made training steps 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        num_train_epochs=3, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=1e-2,
        logging_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0)
    return TrainingArguments(str(output_dir), **{**defaults, **overrides})


def masks_of(controller) -> dict[int, torch.Tensor]:
    return {gid: m.clone() for gid, m in controller.group_masks().items()}


def same_tensors(a: dict[Any, torch.Tensor], b: dict[Any, torch.Tensor]) -> bool:
    """Same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def summary(controller, model: torch.nn.Module, losses: list[float]) -> dict[str, Any]:
    """What a run ended with: masks, schedule position, parameters, full state dict and losses."""
    return {"masks": masks_of(controller), "scheduler": controller.scheduler.state_dict(),
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "state": {k: v.clone() for k, v in model.state_dict().items()}, "losses": losses}


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


class StopAfterEpoch(TrainerCallback):
    """Interrupts training at the end of epoch ``epoch`` (1-based), after its checkpoint is due."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_training_stop = round(state.epoch) == self.epoch


def run_full_and_resumed(train: Any, out: Path) -> None:
    """One rank of a multi-process test: an uninterrupted run, one stopped after epoch 1 and resumed;
    the rank's results go to ``out/rank<RANK>.pt`` for the test to compare across ranks."""
    torch.set_num_threads(1)
    data = digits()
    full = train(out / "full", data)
    train(out / "resumed", data, stop_after=1)
    resumed = train(out / "resumed", data, resume=True)
    report = {"full": full, "resumed": resumed, "files": files_under(out / "full")}
    torch.save(report, out / f"rank{os.environ['RANK']}.pt")
