"""Filter pruning in a custom training loop run by ``accelerate`` (``accelerate launch``, any number of processes)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from ..config import PruningConfig
from ..distributed import broadcast_from_main
from ..errors import PruningStateError
from .checkpoints import published, swap_in, weights_digest
from .distributed import PruningRun, example_inputs_from_dataset


class AcceleratedPruner(PruningRun):
    """A pruning controller for a loop driven by an :class:`accelerate.Accelerator`.

    Build it before ``accelerator.prepare(model, ...)``. It registers itself for checkpointing, so
    ``accelerator.save_state`` / ``load_state`` carry its masks and schedule position (written by the
    main process only, after the weights) with a digest of the weights they belong to: loading a state
    whose weights and pruning state disagree (a save cut short over an older one) is refused.
    :meth:`save_checkpoint` / :meth:`load_checkpoint` make that crash-safe: a checkpoint directory is
    replaced only once the new one is complete. Every process plans masks; the main process's are broadcast
    and replace the others';
    BatchNorm adaptation (when ``pruning_init`` > 0 and ``data_loader`` is given) averages its
    statistics across processes, and ``data_loader`` stays the controller's for later adaptations.
    ::

        pruner = AcceleratedPruner(accelerator, model, config, data_loader=train_loader)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        pruner.load_checkpoint("ckpt")  # resumes if a previous run saved one
        for epoch in range(pruner.controller.scheduler.current_epoch + 1, epochs):
            pruner.epoch_step()
            for batch in train_loader:
                loss = criterion(model(batch["pixel_values"]), batch["labels"]) + pruner.loss()
                accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
                pruner.step()
            pruner.log(step=epoch)
            pruner.save_checkpoint("ckpt")
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
        self.controller.data_loader = data_loader
        self.accelerator = accelerator
        accelerator.register_for_checkpointing(self)

    def log(self, step: int | None = None) -> None:
        """Send :meth:`log_values` to the accelerator's trackers (main process only)."""
        self.accelerator.log(self.log_values(), step=step)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`PruningRun.state_dict` and the digest of the weights it is saved with."""
        return {**super().state_dict(), "weights_sha256": weights_digest(self.model)}

    def load_state_dict(self, state: Mapping[str, Any], source: str | os.PathLike[str] | None = None) -> None:
        """Restore :meth:`state_dict`; ``accelerator.load_state`` loads the weights first, which must be
        those the state was saved with."""
        if "weights_sha256" in state and state["weights_sha256"] != weights_digest(self.model):
            where = f" in {os.fspath(source)}" if source is not None else ""
            raise PruningStateError(f"the pruning state{where} was saved with other weights than those just loaded "
                                    "(a save cut short over an older one?): refusing masks that disagree with them")
        super().load_state_dict(state, source)

    def save_checkpoint(self, directory: str | os.PathLike[str]) -> Path:
        """``accelerator.save_state`` into a temporary directory, then (main process) swap it in place of
        ``directory``: a kill at any moment leaves the previous checkpoint or the new one, whole. Call it on
        every process."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(tmp)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            swap_in(tmp, directory)
        self.accelerator.wait_for_everyone()
        return directory

    def load_checkpoint(self, directory: str | os.PathLike[str]) -> bool:
        """``accelerator.load_state`` of the last checkpoint :meth:`save_checkpoint` completed at
        ``directory``; ``False`` (nothing loaded) when there is none yet."""
        path = broadcast_from_main(published(directory))  # chosen by the main process for all
        if path is None:
            return False
        self.accelerator.load_state(path)
        return True
