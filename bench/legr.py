"""Learned (LeGR) vs unweighted interlayer ranking on digits at 50% of FLOPs, same fine-tuning budget.

LeGR's search fine-tunes each candidate for a few steps and rewards minus the loss on a validation split
carved from the training data (the test split is never seen); then both models are pruned to the target
and fine-tuned for the same number of epochs.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import timm
import torch

import common
import digits
from hf_prune.app.data import DigitsDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--finetune", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    torch.set_num_threads(args.threads)
    generations, finetune = (4, 1) if args.quick else (args.generations, args.finetune)
    splits = digits.data()
    n_val = len(splits.train) // 5
    val = DigitsDataset(splits.train.images[:n_val], splits.train.labels[:n_val])
    torch.manual_seed(0)
    dense = digits.train_dense(timm.create_model("resnet18", num_classes=10), splits, 1 if args.quick else 4, 1e-3)
    digits.recalibrate(dense, splits)
    dense_acc, _ = digits.evaluate(dense, splits.test)
    rows = []
    for ranking in ("unweighted_ranking", "learned_ranking"):
        start = time.perf_counter()
        config = {"params": {"schedule": "baseline", "pruning_flops_target": 0.5, "interlayer_ranking_type": ranking,
                             "prune_downsample_convs": True, "prune_first_conv": True,
                             "legr_params": {"generations": generations, "train_steps": args.train_steps,
                                             "population_size": 16, "num_samples": 4, "max_pruning": 0.9}}}

        def learn(ctrl, train_steps=args.train_steps):
            if ranking != "learned_ranking":
                return
            opt = torch.optim.SGD(ctrl.model.parameters(), lr=1e-3)
            ctrl.learn_ranking(lambda m, steps: digits.train_epoch(m, digits.loader(splits.train), opt, max_steps=steps),
                               lambda m: -digits.evaluate(m, val)[1])

        pruned, ctrl = digits.prune_and_finetune(copy.deepcopy(dense), splits, config, finetune, 1e-3, learn)
        digits.recalibrate(pruned, splits)
        acc, _ = digits.evaluate(pruned, splits.test)
        rows.append({"ranking": ranking, "flops_reduction": ctrl.compression_rate, "dense_acc": dense_acc,
                     "pruned_acc": acc, "drop_points": 100 * (dense_acc - acc), "seconds": time.perf_counter() - start})
    columns = [("ranking", "ranking", ""), ("flops_reduction", "FLOPs removed", ".1%"), ("dense_acc", "dense acc", ".2%"),
               ("pruned_acc", "pruned acc", ".2%"), ("drop_points", "drop (points)", ".2f"), ("seconds", "time (s)", ".0f")]
    notes = [f"timm resnet18, digits {digits.IMAGE_SIZE}px; LeGR: {generations} generations, {args.train_steps} "
             f"steps per candidate, reward = −validation loss; both then fine-tuned {finetune} epochs."]
    meta = {"title": "LeGR vs unweighted ranking on digits (50% FLOPs)", "load_average_start": load_start}
    print(common.write_results("legr_quick" if args.quick else "legr", rows, columns, meta, notes).read_text())


if __name__ == "__main__":
    main()
