"""Filter pruning in a custom training loop run by ``accelerate`` (``accelerate launch``, any number of processes)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from accelerate import Accelerator
from torch import nn

from ..config import PruningConfig
from .distributed import PruningRun, example_inputs_from_dataset


class AcceleratedPruner(PruningRun):
    """A pruning controller for a loop driven by an :class:`accelerate.Accelerator`.

    Build it before ``accelerator.prepare(model, ...)``. It registers itself for checkpointing, so
    ``accelerator.save_state`` / ``load_state`` carry its masks and schedule position (written by the
    main process only). Masks are decided on the main process and broadcast; BatchNorm adaptation
    (when ``pruning_init`` > 0 and ``data_loader`` is given) averages its statistics across processes.
    ::

        pruner = AcceleratedPruner(accelerator, model, config, data_loader=train_loader)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        for epoch in range(epochs):
            pruner.epoch_step()
            for batch in train_loader:
                loss = criterion(model(batch["pixel_values"]), batch["labels"]) + pruner.loss()
                accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
                pruner.step()
            pruner.log(step=epoch)
        small = pruner.strip_model()

    ``example_inputs`` default to the shape of ``data_loader.dataset[0]``'s image.
    """

    def __init__(self, accelerator: Accelerator, model: nn.Module,
                 pruning_config: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
                 example_inputs: Any = None, data_loader: Iterable[Any] | None = None) -> None:
        model = accelerator.unwrap_model(model)
        if example_inputs is None and data_loader is not None:
            example_inputs = example_inputs_from_dataset(model, getattr(data_loader, "dataset", None))
        super().__init__(model, pruning_config, example_inputs, data_loader)
        self.accelerator = accelerator
        accelerator.register_for_checkpointing(self)

    def log(self, step: int | None = None) -> None:
        """Send :meth:`log_values` to the accelerator's trackers (main process only)."""
        self.accelerator.log(self.log_values(), step=step)
