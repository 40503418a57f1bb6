"""PruningTrainer on 2 processes (``torchrun --nproc_per_node 2``, gloo on CPU), for the crash test.

``ddp_crash.py OUT`` trains in ``OUT/checkpoints`` with a checkpoint every 3 steps, resuming from the
newest complete one if a checkpoint exists; with ``KILL=<point>:<n>`` in the environment the main
process SIGKILLs itself there (see ``crash_children``), and torchrun ends the other one. A run that
finishes saves what each rank ended with to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the scripts package
from scripts.common import digits, masks_of, tiny_resnet, training_args  # noqa: E402
from scripts.crash_children import PRUNING, _arm  # noqa: E402

from hf_prune.integrations.trainer import PruningTrainer  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    resume = any((out / "checkpoints").glob("checkpoint-*"))
    args = training_args(out / "checkpoints", num_train_epochs=3, per_device_train_batch_size=8, save_strategy="steps",
                         save_steps=3, save_total_limit=2, ddp_backend="gloo")
    trainer = PruningTrainer(tiny_resnet(), args, pruning_config=PRUNING, train_dataset=digits(limit=96).train)
    if os.environ["RANK"] == "0":
        _arm(os.environ.get("KILL"), "trainer")
    trainer.train(resume_from_checkpoint=resume or None)
    result = {"masks": masks_of(trainer.controller), "scheduler": trainer.controller.scheduler.state_dict(),
              "state": {k: v.clone() for k, v in trainer.model.state_dict().items()}}
    torch.save(result, out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
