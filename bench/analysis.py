"""Analysis time of ``hf_prune.analyze_model`` on timm models (batch 1, random init, 224×224 unless noted).

Each model's first ``analyze_model`` call is timed as its warm-up; the first model's is the cold first
call in the process (d). Then, in rounds over all models (so load from other processes hits no model
alone), we time (a) ``trace_model`` + ``build_groups`` (analysis proper), (b) the strip verification
``exclude_unstrippable`` on those groups, (c) the whole ``analyze_model(verify=True)`` and, for scale,
one plain eval forward pass."""

from __future__ import annotations

import time
from typing import Any

from common import Column, Timer, alternate, medians, minima, parse_args, report, timed, timm_model

import torch

from hf_prune import analyze_model
from hf_prune.graph.groups import PruningPolicy, build_groups
from hf_prune.graph.trace import trace_model
from hf_prune.graph.verify import exclude_unstrippable

MODELS = ["resnet18", "resnet50", "mobilenetv2_100", "convnext_tiny", "vit_small_patch16_224", "vit_base_patch16_224",
          "davit_tiny"]
QUICK_MODELS = ["resnet50", "vit_small_patch16_224"]
GOALS = {"resnet50": 0.5, "vit_small_patch16_224": 1.0, "vit_base_patch16_224": 1.0}  # seconds for (a), from the issues
IMAGE_SIZES = {"davit_tiny": 64}
"""Image side of the models not measured at 224 (recorded as the model's input size): DaViT as its row in
docs/coverage.md, a model whose strip check bisects to many failing groups (about 55 strips)."""
COLUMNS: list[Column] = [
    ("model", "model", ""), ("input", "input", ""), ("groups", "#groups", "d"), ("prunable", "#prunable", "d"),
    ("gflops", "dense GFLOPs", ".2f"), ("forward_s", "forward (s)", ".3f"),
    ("trace_groups_s", "(a) trace+groups (s)", ".3f"), ("trace_groups_s_min", "(a) min (s)", ".3f"),
    ("verify_s", "(b) verify (s)", ".3f"), ("analyze_s", "(c) analyze_model (s)", ".3f"),
    ("first_call_s", "(d) 1st call (s)", ".3f"), ("goal_s", "goal (a) (s)", ".1f"), ("met", "met", ""),
]
NOTES = [
    "Medians over the repeats (rounds over all models); times in seconds. (a) is analysis proper: "
    "`trace_model` + `build_groups`. (b) is `exclude_unstrippable` on the groups of (a). (c) is "
    "`analyze_model(verify=True)` end to end. (d) is the model's first `analyze_model` call (its warm-up); "
    "in the first row it is the cold first call in the process. forward: one plain eval forward pass under "
    "`no_grad`, for scale. (a) min: the fastest repeat, the least disturbed by other processes; met compares "
    "the median with the goal.",
    "Dense GFLOPs are `torch.utils.flop_counter`'s (2 FLOPs per multiply-add).",
    "Torch-Pruning reference figures measured on this machine: 0.09 s ResNet-50, 0.29 s ViT-B/16.",
]


def prepare(name: str, threads: int) -> tuple[dict[str, Any], list[Timer]]:
    """The row facts of one model (after its first, timed ``analyze_model`` call) and its timers."""
    model = timm_model(name, threads)
    size = IMAGE_SIZES.get(name, 224)
    if size != 224:
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    analysis = analyze_model(model, x)
    row = {"model": name, "input": f"{size}×{size}", "groups": len(analysis.groups),
           "prunable": len(analysis.prunable_groups), "gflops": analysis.dense_flops / 1e9,
           "first_call_s": time.perf_counter() - start}

    def staged() -> dict[str, float]:
        t0 = time.perf_counter()
        trace = trace_model(model, x)
        groups = build_groups(trace, model, PruningPolicy())
        t1 = time.perf_counter()
        exclude_unstrippable(model, trace, groups, x)
        return {f"{name}/trace_groups_s": t1 - t0, f"{name}/verify_s": time.perf_counter() - t1}

    def forward() -> None:
        with torch.no_grad():
            model.eval()(x)

    full = timed(f"{name}/analyze_s", lambda: analyze_model(model, x))
    return row, [staged, full, timed(f"{name}/forward_s", forward)]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], MODELS, QUICK_MODELS, repeats=3, quick_repeats=2)
    prepared = [prepare(name, args.threads) for name in args.models]
    # all models in every round, so that a burst of load from other processes hits no model alone
    samples = alternate([t for _, timers in prepared for t in timers], args.repeats, warmup=0)
    rows = []
    for row, _ in prepared:
        mine = {key.partition("/")[2]: v for key, v in samples.items() if key.startswith(row["model"] + "/")}
        times, goal = medians(mine), GOALS.get(row["model"])
        rows.append({**row, **times, **minima(mine), "goal_s": goal,
                     "met": None if goal is None else times["trace_groups_s"] <= goal, "samples": mine})
    report("analysis", args, rows, COLUMNS, {"title": "hf_prune analysis time", "batch": 1}, NOTES)


if __name__ == "__main__":
    main()
