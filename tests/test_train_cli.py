"""``hf-prune train``: a recipe end to end, and bad input stopped before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hf_prune
from hf_prune.app.cli import main

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"


def _small(out: Path) -> list[str]:
    return ["--set", f"training.output_dir={out}", "--set", "model.image_size=16", "--set", "data.limit=128",
            "--set", "dense_epochs=1", "--set", "training.num_train_epochs=2", "--set", "pruning.params.pruning_steps=1",
            "--set", "training.per_device_train_batch_size=32", "--set", "model.name=timm/test_resnet",
            "--set", "training.logging_steps=1"]


def test_demo_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(DEMO), *_small(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "report.json", "model", "model.onnx"):
        assert name in printed
    report = json.loads((out / "report.json").read_text())
    stats = report["statistics"]
    assert stats["flops_after"] <= 0.5 * stats["flops_before"] * 1.02
    assert set(report["dense_metrics"]) >= {"accuracy"} and set(report["pruned_metrics"]) >= {"accuracy"}
    assert report["level_history"] and report["level_history"][-1][1] == pytest.approx(0.5)
    onnx = report["onnx"]  # speed itself is noise on a shared CPU (bench/ measures it): check what is reported
    assert onnx["batch"] == 8 and onnx["speedup"] == pytest.approx(onnx["dense_ms"] / onnx["pruned_ms"])
    assert f"| speedup | {onnx['speedup']:.2f}× |" in (out / "report.md").read_text()
    assert (out / "pruning_level.png").stat().st_size > 1000 and (out / "layer_widths.png").stat().st_size > 1000
    assert "## Accuracy" in (out / "report.md").read_text()
    model = hf_prune.from_pretrained(out / "model")
    assert sum(p.numel() for p in model.parameters()) * 1e-6 == pytest.approx(stats["params_after"] * 1e-6, rel=1e-6)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert (out / "onnx" / "model.onnx").is_file()


@pytest.mark.parametrize("override, message", [
    ("model.name=timm/resnet_does_not_exist", "unknown timm model"),
    ("data.source=imagefolder", "needs 'path'"),
    ("training.num_train_epocs=1", "did you mean 'num_train_epochs'"),
    ("model={config: {hidden_sizes: [8]}}", "model.config needs a 'model_type'"),
])
def test_bad_recipes_fail_before_training(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["train", str(DEMO), *_small(out), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", str(DEMO), *_small(blocker / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_missing_recipe(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_same_recipe_on_two_processes(tmp_path):
    """The demo recipe, unchanged, under torchrun with 2 CPU processes (gloo): one set of products."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hf_prune.app.cli", "train", str(DEMO), *_small(out), "--set", "training.use_cpu=true",
           "--set", "training.disable_tqdm=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report.json") == 1  # only the main process reports
    report = json.loads((out / "report.json").read_text())
    assert report["statistics"]["flops_after"] < 0.52 * report["statistics"]["flops_before"]
    assert hf_prune.from_pretrained(out / "model")(torch.randn(1, 3, 16, 16)).shape == (1, 10)
