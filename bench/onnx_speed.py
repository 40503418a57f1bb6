"""ONNX Runtime CPU latency of timm models, dense versus stripped at a 50% FLOPs target.

Each model (random init, its BatchNorm and LayerNorm parameters re-randomized, since timm zero-inits
the last BatchNorm gamma of residual branches and the exporter would fold those branches away) is
pruned with ``pruning_flops_target`` 0.5 and kept channels rounded to ``channel_multiple`` (16 unless
the model spec says ``name:multiple``), stripped, and both models are exported with
``hf_prune.export_onnx`` (Optimum's exporter, outputs checked in ONNX Runtime). Dense and pruned
sessions then run alternately at batch 1 and 8, intra-op thread spinning off.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from common import Column, alternate, medians, minima, parse_args, randomize_norms, report, timed, timm_model

import numpy as np
import onnxruntime as ort
import torch

from hf_prune import PruningConfig, create_pruning_controller
from hf_prune.integrations.onnx import export_onnx

MODELS = ["resnet50", "resnet50:8", "mobilenetv2_100", "convnext_tiny", "vit_small_patch16_224"]
QUICK_MODELS = ["mobilenetv2_100"]
BATCHES = (1, 8)
FLOPS_TARGET = 0.5
DEFAULT_MULTIPLE = 16
WARMUP = 2
GOALS = {("resnet50", 8): 1.8}  # (model, batch) → speedup, from the issue
COLUMNS: list[Column] = [
    ("model", "model", ""), ("multiple", "channel multiple", "d"), ("batch", "batch", "d"),
    ("flops_reduction", "FLOPs removed", ".1%"), ("params_reduction", "params removed", ".1%"),
    ("dense_ms", "dense (ms)", ".1f"), ("pruned_ms", "pruned (ms)", ".1f"), ("speedup", "speedup", ".2f"),
    ("min_speedup", "speedup of minima", ".2f"), ("efficiency", "speedup ÷ FLOPs ratio", ".2f"),
    ("goal", "goal", ".1f"), ("met", "met", ""),
]
NOTES = [
    f"ONNX Runtime {ort.__version__}, CPUExecutionProvider, `session.intra_op.allow_spinning=0`, one "
    f"inter-op thread. Medians over the repeats after {WARMUP} warm-up rounds; dense and pruned runs "
    "alternate (the order swaps every round). speedup = dense median / pruned median; speedup of minima = "
    "the same for the fastest runs (the least disturbed by other processes); FLOPs ratio = dense FLOPs / "
    "pruned FLOPs (2.0 at exactly 50% removed), so speedup ÷ FLOPs ratio is 1.0 when time falls as FLOPs do.",
    f"Pruning: `PruningConfig(params={{'pruning_flops_target': {FLOPS_TARGET}, 'channel_multiple': M}})`, "
    f"`set_pruning_level({FLOPS_TARGET})` (L2 filter importance on random weights), `strip_model`; "
    "224×224 inputs; export through `hf_prune.export_onnx` (Optimum), which checks ONNX Runtime "
    "against PyTorch.",
]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def spec(model_spec: str) -> tuple[str, int]:
    """``"name"`` or ``"name:multiple"`` → (timm name, channel multiple)."""
    name, _, multiple = model_spec.partition(":")
    return name, int(multiple or DEFAULT_MULTIPLE)


def bench_model(model_spec: str, repeats: int, threads: int, workdir: Path) -> list[dict[str, Any]]:
    """One row per batch size for a model pruned at one channel multiple."""
    name, multiple = spec(model_spec)
    dense = randomize_norms(timm_model(name, threads)).eval()
    model = copy.deepcopy(dense)
    config = PruningConfig(params={"pruning_flops_target": FLOPS_TARGET, "channel_multiple": multiple})
    controller = create_pruning_controller(model, config, example_inputs=torch.randn(1, 3, 224, 224))
    controller.set_pruning_level(FLOPS_TARGET)
    stats = controller.statistics()
    pruned = controller.strip_model(model)
    sessions = {kind: session(export_onnx(m, workdir / f"{name}-{multiple}-{kind}"), threads)
                for kind, m in (("dense", dense), ("pruned", pruned))}
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        timers = [timed(f"{kind}_ms", lambda s=s: s.run(None, {s.get_inputs()[0].name: x}))
                  for kind, s in sessions.items()]
        samples = {k: [t * 1e3 for t in v] for k, v in alternate(timers, repeats, warmup=WARMUP).items()}
        times, fastest = medians(samples), minima(samples)
        speedup = times["dense_ms"] / times["pruned_ms"]
        goal = GOALS.get((name, batch)) if multiple == DEFAULT_MULTIPLE else None
        rows.append({
            "model": name, "multiple": multiple, "batch": batch, "repeats": repeats,
            "flops_reduction": 1 - stats.flops_after / stats.flops_before,
            "params_reduction": 1 - stats.params_after / stats.params_before,
            **times, **fastest, "speedup": speedup,
            "min_speedup": fastest["dense_ms_min"] / fastest["pruned_ms_min"],
            "efficiency": speedup * stats.flops_after / stats.flops_before,
            "goal": goal, "met": None if goal is None else speedup >= goal, "samples": samples,
        })
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], MODELS, QUICK_MODELS, repeats=15, quick_repeats=3)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for m in args.models for row in bench_model(m, args.repeats, args.threads, Path(tmp))]
    report("onnx_speed", args, rows, COLUMNS, {"title": "ONNX Runtime speed: dense vs stripped (50% FLOPs)",
                                                "flops_target": FLOPS_TARGET, "batches": list(BATCHES)}, NOTES)


if __name__ == "__main__":
    main()
