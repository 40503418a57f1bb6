"""AcceleratedPruner in a custom loop on 2 processes (``accelerate launch --multi_gpu --num_processes 2``
or ``torchrun --nproc_per_node 2``; gloo on CPU, or NCCL on GPUs with HF_PRUNE_TEST_DEVICE=cuda).

Trains uninterrupted, then stops after epoch 1 and resumes with ``accelerator.load_state``; each rank
saves its masks, parameters, BatchNorm statistics right after adaptation and its losses to
``<out>/rank<r>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader

from common import PRUNING, run_full_and_resumed, summary, tiny_resnet
from hf_prune.integrations.accelerate import AcceleratedPruner

EPOCHS = 3
ON_CUDA = os.environ.get("HF_PRUNE_TEST_DEVICE", "cpu") == "cuda"  # NCCL on GPUs, else gloo on CPU
if ON_CUDA:  # resumed == uninterrupted needs deterministic kernels
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
# masks from the start (BatchNorm adaptation runs) and a controller loss that goes through DDP
CONFIG = {"pruning_init": 0.25, "params": {**PRUNING["params"], "regularization_weight": 0.01}}


def train(output_dir: Path, data, stop_after: int | None = None, resume: bool = False) -> dict:
    accelerator = Accelerator(cpu=not ON_CUDA, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model = tiny_resnet()
    loader = DataLoader(data.train, batch_size=16, shuffle=True)
    pruner = AcceleratedPruner(accelerator, model, CONFIG, data_loader=loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    pruner.adapt_batchnorm(loader)  # again, on each process's shard: statistics are averaged across ranks
    bn_stats = {k: v.clone() for k, v in pruner.model.state_dict().items() if "running" in k}
    if resume:
        accelerator.load_state(output_dir / "checkpoint")
    losses = []
    for epoch in range(pruner.controller.scheduler.current_epoch + 1, EPOCHS):
        pruner.epoch_step()
        loader.set_epoch(epoch)
        total = 0.0
        for batch in loader:
            loss = model(**batch).loss + pruner.loss()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()
            total += loss.item()
        losses.append(total / len(loader))
        accelerator.save_state(output_dir / "checkpoint")
        if epoch == stop_after:
            break
    return {**summary(pruner.controller, pruner.model, losses), "bn_stats": bn_stats}




if __name__ == "__main__":
    run_full_and_resumed(train, Path(sys.argv[1]))
