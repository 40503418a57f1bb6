"""Accuracy after pruning on the embedded digits data: dense vs pruned at 30/50/70% of FLOPs.

Every model gets the same budget: ``dense`` epochs of training, then ``finetune`` more epochs — plain for
the dense baseline, pruning on the exponential schedule (reaching the target at 2/3 of them) for the
others. Goal: at most 1 point of accuracy lost at 50% of FLOPs.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from transformers import ResNetConfig, ResNetForImageClassification

import common
import digits

MODELS = {
    "timm resnet18": lambda: __import__("timm").create_model("resnet18", num_classes=10),
    "hf ResNet (bottleneck, 4 stages)": lambda: ResNetForImageClassification(ResNetConfig(
        embedding_size=32, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1], layer_type="bottleneck",
        num_labels=10)),
}
TARGETS = (0.3, 0.5, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dense", type=int, default=4, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=6, help="fine-tuning epochs (pruning schedule inside)")
    parser.add_argument("--quick", action="store_true", help="1 + 2 epochs, 50% only")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    torch.set_num_threads(args.threads)
    dense_epochs, finetune = (1, 2) if args.quick else (args.dense, args.finetune)
    targets = (0.5,) if args.quick else TARGETS
    splits = digits.data()
    rows = []
    for name, build in MODELS.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        dense = digits.train_dense(build(), splits, dense_epochs, args.lr)
        baseline = digits.train_dense(copy.deepcopy(dense), splits, finetune, args.lr)
        digits.recalibrate(baseline, splits)
        dense_acc, _ = digits.evaluate(baseline, splits.test)
        for target in targets:
            steps = max(1, round(finetune * 2 / 3))
            config = {"pruning_init": 0.1 * target / 0.5,
                      "params": {"schedule": "exponential", "pruning_flops_target": target, "pruning_steps": steps,
                                 "prune_downsample_convs": True, "prune_first_conv": True}}
            pruned, ctrl = digits.prune_and_finetune(dense, splits, config, finetune, args.lr)
            digits.recalibrate(pruned, splits)
            acc, _ = digits.evaluate(pruned, splits.test)
            stats = ctrl.statistics()
            rows.append({"model": name, "target": target, "flops_reduction": 1 - stats.flops_after / stats.flops_before,
                         "params_reduction": 1 - stats.params_after / stats.params_before, "dense_acc": dense_acc,
                         "pruned_acc": acc, "drop_points": 100 * (dense_acc - acc),
                         "goal": "≤ 1" if target == 0.5 else "–",
                         "met": ("yes" if 100 * (dense_acc - acc) <= 1 else "no") if target == 0.5 else "–",
                         "seconds": time.perf_counter() - start})
    columns = [("model", "model", ""), ("target", "FLOPs target", ".0%"), ("flops_reduction", "FLOPs removed", ".1%"),
               ("params_reduction", "params removed", ".1%"), ("dense_acc", "dense acc", ".2%"),
               ("pruned_acc", "pruned acc", ".2%"), ("drop_points", "drop (points)", ".2f"), ("goal", "goal", ""),
               ("met", "met", "")]
    notes = [f"Digits (scikit-learn, 1,438 train / 359 test images, {digits.IMAGE_SIZE}×{digits.IMAGE_SIZE}), random "
             f"init, AdamW lr {args.lr}. Dense: {dense_epochs} + {finetune} epochs. Pruned: the same "
             f"{dense_epochs} dense epochs, then {finetune} epochs of fine-tuning with the exponential schedule "
             "(L2 importance; first and downsample convolutions pruned too, so that 70% is reachable), then strip. "
             "Before every evaluation, dense and pruned alike, BatchNorm statistics are re-estimated on the training "
             "set (on 32 px digits they otherwise swing by tens of points from epoch to epoch)."]
    meta = {"title": "hf_prune accuracy on digits", "load_average_start": load_start, "quick": args.quick}
    name = "accuracy_quick" if args.quick else "accuracy"
    print(common.write_results(name, rows, columns, meta, notes).read_text())


if __name__ == "__main__":
    main()
