"""PruningTrainer on 2 processes (``torchrun --nproc_per_node 2``, gloo on CPU).

Trains uninterrupted, then interrupted after epoch 1 and resumed from its checkpoint; each rank saves
what both runs ended with and the files of the uninterrupted run to ``<out>/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path


from common import PRUNING, StopAfterEpoch, run_full_and_resumed, summary, tiny_resnet, training_args
from hf_prune.integrations.trainer import PruningTrainer

CONFIG = {"params": {**PRUNING["params"], "regularization_weight": 0.01}}  # the controller's loss goes through DDP


def train(output_dir: Path, data, stop_after: int | None = None, resume: bool = False) -> dict:
    args = training_args(output_dir, save_strategy="epoch", save_total_limit=1, ddp_backend="gloo",
                         per_device_train_batch_size=16)
    trainer = PruningTrainer(tiny_resnet(), args, pruning_config=CONFIG, train_dataset=data.train,
                             callbacks=[StopAfterEpoch(stop_after)] if stop_after else None)
    trainer.train(resume_from_checkpoint=resume or None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return summary(trainer.controller, trainer.model, losses)




if __name__ == "__main__":
    run_full_and_resumed(train, Path(sys.argv[1]))
