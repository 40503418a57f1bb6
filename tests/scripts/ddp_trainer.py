"""PruningTrainer on 2 processes (``torchrun --nproc_per_node 2``, gloo on CPU).

Trains uninterrupted, then interrupted after epoch 1 and resumed from its checkpoint; each rank saves
its masks, weights, losses and what it found on disk to ``<out>/rank<r>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from common import PRUNING, digits, masks_of, tiny_resnet, training_args
from hf_prune.integrations.trainer import PruningTrainer


class StopAfterEpoch(TrainerCallback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_training_stop = round(state.epoch) == self.epoch


def train(output_dir: Path, data, stop_after: int | None = None, resume: bool = False) -> PruningTrainer:
    args = training_args(output_dir, save_strategy="epoch", save_total_limit=1, ddp_backend="gloo",
                         per_device_train_batch_size=16)
    trainer = PruningTrainer(tiny_resnet(), args, pruning_config=PRUNING, train_dataset=data.train,
                             callbacks=[StopAfterEpoch(stop_after)] if stop_after else None)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data = digits()
    full = train(out / "full", data)
    train(out / "resumed", data, stop_after=1)
    resumed = train(out / "resumed", data, resume=True)
    torch.save({
        "masks": masks_of(full.controller),
        "resumed_masks": masks_of(resumed.controller),
        "scheduler": full.controller.scheduler.state_dict(),
        "resumed_scheduler": resumed.controller.scheduler.state_dict(),
        "weights": full.model.state_dict(),
        "resumed_weights": resumed.model.state_dict(),
        "losses": [h["loss"] for h in full.state.log_history if "loss" in h],
        "files": sorted(str(p.relative_to(out / "full")) for p in (out / "full").rglob("*") if p.is_file()),
    }, out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
