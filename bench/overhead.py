"""Training-step overhead of hf_prune's masks: timm models masked at level 0.5 versus a dense copy.

One step is forward, cross-entropy backward and an SGD (momentum 0.9) step on random 224×224 inputs
(``--image-size``, ``--batch``: smaller settings for a busy machine, written to their own result files).
Dense and masked steps alternate (dense first, then masked first, ...) after warm-up steps. A masked
model still computes at full width (masks only), so the ratio is the cost of the masks themselves.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any, Callable

from common import Column, alternate, medians, minima, parse_args, report, timed, timm_model

import torch
import torch.nn.functional as F
from torch import nn

from hf_prune import create_pruning_controller

MODELS = ["resnet18", "resnet50"]
IMAGE_SIZE = 224
QUICK_MODELS = ["resnet18"]
BATCH = 8
LEVEL = 0.5
GOAL = 1.05  # masked/dense step time, from the issue
WARMUP = 2
COLUMNS: list[Column] = [
    ("model", "model", ""), ("image_size", "input", "d"), ("batch", "batch", "d"), ("steps", "steps", "d"),
    ("prunable", "#prunable groups", "d"), ("masked_filters", "filters masked", ".0%"),
    ("dense_s", "dense step (s)", ".3f"), ("masked_s", "masked step (s)", ".3f"),
    ("ratio", "masked/dense", ".3f"), ("paired_ratio", "paired ratio", ".3f"),
    ("min_ratio", "min ratio", ".3f"),
    ("goal", "goal", ".2f"), ("met", "met", ""),
]
NOTES = [
    f"Training step (forward, backward, SGD with momentum) on CPU, medians over the steps after {WARMUP} "
    "warm-up steps each, dense and masked steps alternating. masked/dense is the ratio of the medians; "
    "paired ratio is the median of the ratios of the steps taken in the same round; min ratio is the "
    "ratio of the fastest steps (the least disturbed by other processes).",
    f"Masked: `create_pruning_controller(model, {{'params': {{'pruning_target': {LEVEL}}}}})` then "
    f"`set_pruning_level({LEVEL})`; dense: a `copy.deepcopy` taken before. The masked model still "
    "computes at full width (masks only), so this measures mask overhead.",
]


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def bench_model(name: str, steps: int, threads: int, size: int = IMAGE_SIZE, batch: int = BATCH) -> dict[str, Any]:
    masked = timm_model(name, threads).train()
    dense = copy.deepcopy(masked)
    ctrl = create_pruning_controller(masked, {"params": {"pruning_target": LEVEL}},
                                     example_inputs=torch.randn(1, 3, size, size))
    ctrl.set_pruning_level(LEVEL)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, masked.num_classes, (batch,))
    samples = alternate([timed("dense_s", train_step(dense, x, y)), timed("masked_s", train_step(masked, x, y))],
                        steps, warmup=WARMUP)
    times, fastest = medians(samples), minima(samples)
    ratio = times["masked_s"] / times["dense_s"]
    return {
        "model": name, "image_size": size, "batch": batch, "steps": steps, "prunable": len(ctrl.groups),
        "masked_filters": ctrl.compression_rate, **times, "ratio": ratio,
        "paired_ratio": statistics.median(m / d for m, d in zip(samples["masked_s"], samples["dense_s"])),
        "goal": GOAL, "met": ratio <= GOAL, **fastest, "min_ratio": fastest["masked_s_min"] / fastest["dense_s_min"],
        "samples": samples,
    }


def main() -> None:
    def sizes(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help=f"input size (default {IMAGE_SIZE})")
        parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")

    args = parse_args(__doc__.splitlines()[0], MODELS, QUICK_MODELS, repeats=20, quick_repeats=6, extra=sizes)
    meta = {"title": "hf_prune mask overhead in training", "level": LEVEL, "batch": args.batch,
            "image_size": args.image_size, "warmup": WARMUP}
    rows = [bench_model(name, args.repeats, args.threads, args.image_size, args.batch) for name in args.models]
    custom = (args.image_size, args.batch) != (IMAGE_SIZE, BATCH)
    report("overhead" + (f"_{args.image_size}px_b{args.batch}" if custom else ""), args, rows, COLUMNS, meta, NOTES)


if __name__ == "__main__":
    main()
