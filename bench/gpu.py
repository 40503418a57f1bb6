"""GPU speed of hf_prune: mask overhead per training step, and inference speedup of stripped models.

For each timm model (random init, norm parameters re-randomized: timm zero-inits the last BatchNorm
gamma of residual branches), controllers are built on a CPU copy with the deployment target named in
the config (``deploy_device``/``deploy_dtype``), then the models move to the device:

- train: one step (forward, cross-entropy backward, SGD with momentum) of a model masked at 50% of
  FLOPs vs its dense copy, bf16 autocast, channels_last for CNNs;
- infer: forward of the dense model vs the stripped one, in bf16, channels_last, under inference_mode,
  for 50% FLOPs with NNCF's default multiple 8, with ``channel_multiple: auto``, with auto and every
  group (first and downsample convs too, CNNs), and for ``pruning_latency_target`` 0.6 (one level in
  every group, and with ``all_weights``: channels where the latency table says they save most).

Timing: CUDA events after a device synchronize (wall clock on CPU), dense and pruned alternating
(the order swaps every round), medians. ``--device cpu --quick`` runs tiny settings anywhere.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import traceback
from typing import Any, Callable

from common import Column, alternate, medians, randomize_norms, timed, write_results

import torch
import torch.nn.functional as F
from torch import nn

from hf_prune import create_pruning_controller

MODELS = ["resnet50", "mobilenetv2_100", "vit_small_patch16_224"]
QUICK_CPU_MODELS = ["resnet18", "vit_tiny_patch16_224"]
FLOPS_TARGET, LATENCY_TARGET = 0.5, 0.6
SPEEDUP_GOALS = {"resnet50": 1.6, "vit_small_patch16_224": 1.6, "mobilenetv2_100": 1.35}  # the issue's, bf16
OVERHEAD_GOAL, LATENCY_GOAL = 1.03, 0.62
VARIANTS: dict[str, dict[str, Any]] = {
    "multiple 8": {"pruning_flops_target": FLOPS_TARGET, "channel_multiple": 8},
    "auto": {"pruning_flops_target": FLOPS_TARGET, "channel_multiple": "auto"},
    "auto, all groups": {"pruning_flops_target": FLOPS_TARGET, "channel_multiple": "auto",
                         "prune_first_conv": True, "prune_downsample_convs": True},
    f"latency {LATENCY_TARGET}": {"pruning_latency_target": LATENCY_TARGET, "channel_multiple": "auto",
                                  "prune_first_conv": True, "prune_downsample_convs": True},
}
VARIANTS[f"latency {LATENCY_TARGET}, per group"] = {**VARIANTS[f"latency {LATENCY_TARGET}"], "all_weights": True}
COLUMNS: list[Column] = [
    ("model", "model", ""), ("run", "run", ""), ("batch", "batch", "d"), ("groups", "#groups", "d"),
    ("flops_reduction", "FLOPs removed", ".1%"), ("dense_ms", "dense (ms)", ".2f"), ("pruned_ms", "pruned (ms)", ".2f"),
    ("ratio", "pruned/dense", ".3f"), ("speedup", "speedup", ".2f"), ("predicted", "predicted/dense", ".3f"),
    ("goal", "goal", ""), ("met", "met", ""), ("seconds", "setup (s)", ".0f"), ("error", "error", ""),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--models", nargs="+", help=f"timm names (default: {' '.join(MODELS)}; "
                                                     f"--device cpu --quick: {' '.join(QUICK_CPU_MODELS)})")
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations (and tiny models and "
                                                             "inputs on CPU)")
    parser.add_argument("--iterations", type=int, help="timed rounds (default 20; --quick 8)")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    cpu_quick = args.device.type == "cpu" and args.quick
    args.models = args.models or (QUICK_CPU_MODELS if cpu_quick else MODELS)
    args.iterations = args.iterations or (8 if args.quick else 20)
    args.image_size = 64 if cpu_quick else 224
    args.train_batch, args.infer_batch = (4, 8) if cpu_quick else (128, 256)
    args.dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    args.load_average_start = [round(x, 2) for x in os.getloadavg()]
    return args


def dense_model(name: str, image_size: int) -> nn.Module:
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": image_size} if name.startswith(("vit", "deit")) else {}
    return randomize_norms(timm.create_model(name, pretrained=False, **kwargs))


def on_device(model: nn.Module, args: argparse.Namespace, dtype: torch.dtype | None = None) -> nn.Module:
    model = model.to(args.device, dtype=dtype)
    is_cnn = any(isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.modules())  # not a patch embed
    return model.to(memory_format=torch.channels_last) if is_cnn else model


def images(batch: int, args: argparse.Namespace, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


def median_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


def train_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Mask overhead per training step at 50% FLOPs (bf16 autocast on CUDA)."""
    start = time.perf_counter()
    model = dense_model(name, args.image_size)
    dense = copy.deepcopy(model)
    ctrl = create_pruning_controller(model, {"params": {"pruning_flops_target": FLOPS_TARGET}},
                                     example_inputs=torch.randn(1, 3, args.image_size, args.image_size))
    ctrl.set_pruning_level(FLOPS_TARGET)
    setup = time.perf_counter() - start
    x = images(args.train_batch, args)
    y = torch.randint(0, 1000, (args.train_batch,), device=args.device)

    def step_of(m: nn.Module) -> Callable[[], None]:
        m = on_device(m, args).train()
        optimizer = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(args.device.type, dtype=args.dtype, enabled=args.dtype != torch.float32):
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            optimizer.step()
        return step

    samples = alternate([timed("dense_ms", step_of(dense), args.device),
                         timed("pruned_ms", step_of(model), args.device)], args.iterations, warmup=3)
    samples = {k: [v * 1e3 for v in vs] for k, vs in samples.items()}
    times = medians(samples)
    ratio = median_ratio(samples, "pruned_ms", "dense_ms")
    return {"model": name, "run": "train step, masked", "batch": args.train_batch, "groups": len(ctrl.groups),
            "flops_reduction": ctrl.compression_rate, **times, "ratio": ratio, "goal": f"≤ {OVERHEAD_GOAL}",
            "met": ratio <= OVERHEAD_GOAL, "seconds": setup, "samples": samples}


def infer_rows(name: str, args: argparse.Namespace, table_dir: str) -> list[dict[str, Any]]:
    """Dense vs stripped inference for every variant of :data:`VARIANTS`."""
    base = dense_model(name, args.image_size).eval()
    is_cnn = any(isinstance(m, nn.Conv2d) for m in base.modules())
    dense = on_device(copy.deepcopy(base), args, args.dtype).eval()
    x = images(args.infer_batch, args, args.dtype)
    rows = []
    for run, params in VARIANTS.items():
        if not is_cnn and params.get("prune_first_conv") and "pruning_flops_target" in params:
            continue  # ViT: no first/downsample convs, same as "auto"
        rows.append(guarded(name, run, lambda: infer_row(name, run, params, base, dense, x, args, table_dir)))
    return rows


def guarded(name: str, run: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or a row naming the error: one failure must not cost a whole (one-shot) GPU run."""
    start = time.perf_counter()
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the results instead
        traceback.print_exc()
        row = {"model": name, "run": run, "error": f"{type(exc).__name__}: {exc}"}
    print(f"{name} / {run}: {time.perf_counter() - start:.0f} s", flush=True)
    return row


def infer_row(name: str, run: str, params: dict[str, Any], base: nn.Module, dense: nn.Module, x: torch.Tensor,
              args: argparse.Namespace, table_dir: str) -> dict[str, Any]:
    """One variant: prune a copy of ``base``, strip it, time it against ``dense``."""
    start = time.perf_counter()
    model = copy.deepcopy(base)
    deploy = {"deploy_device": str(args.device), "deploy_dtype": str(args.dtype).removeprefix("torch."),
              "latency_batch_size": args.infer_batch, "latency_table_path": os.path.join(table_dir, f"{name}.json")}
    ctrl = create_pruning_controller(model, {"params": {**params, **deploy}},
                                     example_inputs=torch.randn(1, 3, args.image_size, args.image_size))
    ctrl.set_pruning_level(ctrl.target_level)
    flops_reduction = 1 - ctrl.current_flops / ctrl.analysis.dense_flops
    predicted = None if ctrl.latency is None else ctrl.predicted_latency_ms / ctrl.latency.dense
    pruned = on_device(ctrl.strip_model(model, do_copy=True), args, args.dtype).eval()
    setup = time.perf_counter() - start
    with torch.inference_mode():
        samples = alternate([timed("dense_ms", lambda: dense(x), args.device),
                             timed("pruned_ms", lambda: pruned(x), args.device)], args.iterations, warmup=3)
    samples = {k: [v * 1e3 for v in vs] for k, vs in samples.items()}
    times = medians(samples)
    ratio = median_ratio(samples, "pruned_ms", "dense_ms")
    if ctrl.latency is not None:
        goal, met = f"≤ {LATENCY_GOAL}", ratio <= LATENCY_GOAL
    elif run == "auto" and name in SPEEDUP_GOALS and args.device.type == "cuda":
        goal, met = f"≥ {SPEEDUP_GOALS[name]}×", 1 / ratio >= SPEEDUP_GOALS[name]
    else:
        goal = met = None
    return {"model": name, "run": run, "batch": args.infer_batch, "groups": len(ctrl.groups),
            "flops_reduction": flops_reduction, **times, "ratio": ratio, "speedup": 1 / ratio,
            "predicted": predicted, "goal": goal, "met": met, "seconds": setup, "samples": samples,
            "params": params}


def main() -> None:
    args = parse_args()
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    dtype = str(args.dtype).removeprefix("torch.")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as table_dir:
        for name in args.models:
            rows.append(guarded(name, "train step, masked", lambda: train_row(name, args)))
            rows += infer_rows(name, args, table_dir)
    tag = "".join(c for c in device_name.lower().replace("nvidia", "").split()[0] if c.isalnum()) or "device"
    base = f"gpu_{tag}_{dtype}" + ("_quick" if args.quick else "")
    notes = [
        f"Device: {device_name}, {dtype}; torch {torch.__version__}. Train: batch {args.train_batch}, "
        f"{'bf16 autocast, ' if args.dtype != torch.float32 else ''}channels_last for CNNs, SGD momentum 0.9; "
        f"pruned/dense = median of per-round ratios of step times (mask overhead; the masked model computes "
        f"at full width). Infer: batch {args.infer_batch}, model in {dtype}, channels_last for CNNs, "
        f"inference_mode; {args.iterations} timed rounds after 3 warm-up rounds, dense and pruned alternating.",
        f"Runs: FLOPs target {FLOPS_TARGET} with NNCF's default multiple 8, with `channel_multiple: auto`, with "
        f"auto plus `prune_first_conv`/`prune_downsample_convs`; `pruning_latency_target: {LATENCY_TARGET}` "
        "(auto, all groups; 'per group': with `all_weights`, channels where the table says they save most): "
        "predicted/dense from the latency table measured on this device at this batch size and dtype, "
        "pruned/dense measured. Goals from issue 10 (bf16 batch 256 on H100/H200).",
    ]
    meta = {"title": f"hf_prune on {device_name} ({dtype}): mask overhead and stripped-model speed",
            "device": device_name, "dtype": dtype, "image_size": args.image_size, "iterations": args.iterations,
            "models": args.models, "quick": args.quick, "load_average_start": args.load_average_start,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
    print(write_results(base, rows, COLUMNS, meta, notes).read_text())


if __name__ == "__main__":
    main()
