"""PruningRun: the controller of one training run, identical on every process and across checkpoints.

Both training integrations (:mod:`.trainer`, :mod:`.accelerate`) drive pruning through a
:class:`PruningRun`. It creates the controller on the unwrapped model from inputs that are the same on
every rank, makes every rank use the main process's masks (each plans, then the main process's state
is broadcast and loaded by the others), checks checkpointed state against
the model and config before loading it, reports the values to log, and refuses to step a model whose
shapes changed under the optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Iterable

import torch
from torch import nn

from ..algorithm.bn_adaptation import adapt_batchnorm
from ..algorithm.controller import FilterPruningController, create_pruning_controller
from ..algorithm.statistics import PruningStatistics
from ..config import PruningConfig
from ..distributed import broadcast_from_main, is_main_process
from ..errors import MissingInputError, UnsupportedSetupError
from ..model_kind import example_inputs
from .pruning_state import load_pruning_state, pruning_state

EXAMPLE_SEED = 0
"""Seed of the example inputs: every process traces the model on the same values."""


def as_pruning_config(value: PruningConfig | Mapping[str, Any] | str | os.PathLike[str]) -> PruningConfig:
    """A :class:`PruningConfig` from itself, an NNCF-style dict, or a JSON/YAML file path."""
    if isinstance(value, PruningConfig):
        return value
    if isinstance(value, Mapping):
        return PruningConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return PruningConfig.from_file(value)
    raise TypeError(f"pruning_config must be a hf_prune.PruningConfig, a dict or a path to a JSON/YAML file, "
                    f"got {type(value).__name__}")


def example_inputs_from_dataset(model: nn.Module, dataset: Any) -> torch.Tensor | dict[str, torch.Tensor]:
    """Batch-1 example inputs shaped like ``dataset[0]``'s image, with seeded values (same on every rank).

    A sample is ``{"pixel_values": (C, H, W), ...}`` or ``(image, label)``. The result is a dict for
    transformers models and a tensor otherwise (:func:`hf_prune.model_kind.example_inputs`).
    """
    try:
        sample = dataset[0]
        image = sample["pixel_values"] if isinstance(sample, Mapping) else sample[0]
        shape = torch.as_tensor(image).shape
    except (TypeError, KeyError, IndexError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise MissingInputError(f"cannot take example inputs from {type(dataset).__name__} ({exc!r}): pass "
                           "example_inputs=, e.g. {'pixel_values': torch.randn(1, 3, 224, 224)}") from exc
    generator = torch.Generator().manual_seed(EXAMPLE_SEED)
    return example_inputs(model, size=tuple(shape), generator=generator, like=next(model.parameters()))


class PruningRun:
    """A :class:`FilterPruningController` driven through one (possibly distributed) training run.

    Build it on the unwrapped model before the model is wrapped for distributed training. Every process
    plans the masks, then the main process's state is broadcast and loaded by the others; ``state_dict`` carries
    the config and model signature so that ``load_state_dict`` rejects a checkpoint of another model or config
    with a clear error.
    """

    def __init__(self, model: nn.Module, pruning_config: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
                 example_inputs: Any = None, data_loader: Iterable[Any] | None = None) -> None:
        config = as_pruning_config(pruning_config)
        self.controller: FilterPruningController = create_pruning_controller(model, config, example_inputs)
        self._stripped = False
        self._sync_masks()
        if data_loader is not None:
            self.adapt_batchnorm(data_loader)

    @property
    def model(self) -> nn.Module:
        """The unwrapped model the controller masks."""
        return self.controller.model

    @property
    def config(self) -> PruningConfig:
        return self.controller.config

    # ------------------------------------------------------------------ schedule
    def epoch_step(self, epoch: int | None = None) -> None:
        """Move the schedule to the next epoch (or to ``epoch``) and share the new masks.

        When the schedule is already at ``epoch`` (a run resumed mid-epoch) the restored masks are kept.
        """
        self.check_trainable()
        scheduler = self.controller.scheduler
        if epoch is not None and scheduler.current_epoch == epoch:
            return
        scheduler.epoch_step(epoch)
        self._sync_masks()

    def step(self) -> None:
        """Count one optimizer step."""
        self.check_trainable()
        self.controller.scheduler.step()

    def loss(self) -> torch.Tensor:
        """The controller's loss (zero unless ``regularization_weight`` > 0)."""
        return self.controller.loss()

    def adapt_batchnorm(self, data_loader: Iterable[Any]) -> None:
        """Re-estimate BatchNorm statistics under the current masks when any channel is masked
        (NNCF's initializer); statistics are averaged across processes."""
        samples = self.config.initializer.batchnorm_adaptation.num_bn_adaptation_samples
        if self.controller.levels_nonzero and samples > 0:
            adapt_batchnorm(self.model, data_loader, samples)

    def log_values(self) -> dict[str, float]:
        """``pruning/level``, ``pruning/flops_reduction`` and ``pruning/compression_stage``."""
        ctrl = self.controller
        dense = ctrl.analysis.dense_flops
        return {
            "pruning/level": ctrl.pruning_level,
            "pruning/flops_reduction": 1.0 - ctrl.current_flops / dense if dense else 0.0,
            "pruning/compression_stage": ctrl.compression_stage(),
        }

    def statistics(self, quickly_collected_only: bool = False) -> PruningStatistics:
        """The controller's statistics (levels, FLOPs and parameters before/after, per-layer table)."""
        return self.controller.statistics(quickly_collected_only)

    # ------------------------------------------------------------------ strip
    def strip_model(self) -> nn.Module:
        """Remove the pruned channels from the model in place and return it; the run cannot step again."""
        self._stripped = True
        return self.controller.strip_model()

    def check_trainable(self) -> None:
        """Raise if the model was stripped: the optimizer and any wrapper still hold the old tensors."""
        shapes = self.controller.analysis.trace.param_shapes
        changed = [f"{name}: {tuple(shapes[name])} -> {tuple(p.shape)}" for name, p in self.model.named_parameters()
                   if name in shapes and tuple(p.shape) != tuple(shapes[name])]
        if self._stripped or changed:
            where = f" ({changed[0]})" if changed else ""
            raise UnsupportedSetupError(
                f"the model was stripped{where}; its optimizer and distributed wrapper still hold the old tensors "
                "and would silently stop training the new ones. Fine-tune a stripped model with a new "
                "Trainer / accelerator.prepare, or strip only at the end of training.")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The controller's :func:`~.pruning_state.pruning_state` (masks and schedule position, with the
        config and model signature they belong to)."""
        return pruning_state(self.controller)

    def load_state_dict(self, state: Mapping[str, Any], source: str | os.PathLike[str] | None = None) -> None:
        """Restore :meth:`state_dict`; :class:`PruningStateError` if it belongs to another model or config."""
        load_pruning_state(self.controller, state, source)

    def _sync_masks(self) -> None:
        state = broadcast_from_main(self.controller.state_dict() if is_main_process() else None)
        if not is_main_process():
            self.controller.load_state_dict(state)

