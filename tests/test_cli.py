"""Tests for the ``hf-prune`` command line (in process, plus one run of the real module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ResNetConfig

from hf_prune.app.cli import _join_reasons, main

RESNET = ["timm/resnet18", "--image-size", "64"]
REPO = Path(__file__).resolve().parents[1]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["analyze", *RESNET, "--json", "--no-verify", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_analyze_prints_groups_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", *RESNET]) == 0
    out = capsys.readouterr().out
    assert "ResNet" in out and "GFLOPs" in out and "11.69 M" in out
    assert "Prunable groups" in out and "layer1.0.conv1" in out
    assert "Unprunable layers" in out
    assert "first convolution conv1" in out
    assert "reaches the model output" in out
    assert "Pruning groups" not in out


def test_analyze_all_lists_unprunable_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", *RESNET, "--all", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "Pruning groups" in out and "not prunable because" in out
    assert "downsample convolution layer2.0.conv1" in out


def test_analyze_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys)
    assert data["model"] == "ResNet" and data["analysis_seconds"] > 0
    model = timm.create_model("resnet18").eval()  # what the command analysed, counted here by torch itself
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert data["flops"] == counter.get_total_flops()
    assert data["params"] == sum(p.numel() for p in model.parameters()) == 11_689_512
    groups = data["groups"]
    assert any(g["prunable"] for g in groups)
    assert all(0 <= g["flops_share"] <= 1 for g in groups)
    # A conv's FLOPs scale with its input and its output channels, so they count in both groups.
    assert 1 < sum(g["flops_share"] for g in groups) <= 2 + 1e-9
    assert all(g["reasons"] for g in groups if not g["prunable"])
    assert "first convolution conv1" in "; ".join(data["unprunable_layers"]["conv1"])


def test_analyze_config_ignored_scopes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pruning.yaml"
    config.write_text("ignored_scopes: [layer1]\n")
    groups = run_json(capsys, "--config", str(config))["groups"]
    layer1 = [g for g in groups if any(p.startswith("layer1.") for p in g["producers"])]
    assert layer1 and not any(g["prunable"] for g in layer1)
    assert all(any("ignored_scopes" in r for r in g["reasons"]) for g in layer1)
    assert any(g["prunable"] and "layer2.1.conv1" in g["producers"] for g in groups)


@pytest.mark.parametrize("text, expected", [
    ("ignored_scopes: [layer9]\n", ["no module named 'layer9'", "layer1"]),
    ("ignored_scope: [layer1]\n", ["unknown key", "did you mean 'ignored_scopes'"]),
])
def test_analyze_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                    expected: list[str]) -> None:
    config = tmp_path / "pruning.yaml"
    config.write_text(text)
    assert main(["analyze", *RESNET, "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert all(e in captured.err for e in expected)
    assert captured.out == ""


@pytest.mark.parametrize("args, expected", [
    (["resnt18"], "did you mean: resnet18"),
    (["timm/resnet18", "--config", "missing.yaml"], "not found: missing.yaml"),
])
def test_analyze_load_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    assert main(["analyze", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_analyze_local_transformers_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                 num_labels=10).save_pretrained(tmp_path)
    assert main(["analyze", str(tmp_path), "--image-size", "32", "--no-verify"]) == 0
    assert "ResNetForImageClassification" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "usage: hf-prune" in capsys.readouterr().err


def test_join_reasons_truncates_whole_reasons() -> None:
    assert _join_reasons(["a", "b"]) == "a; b"
    text = _join_reasons(["x" * 100, "y" * 50, "z" * 50, "w"])
    assert text == "x" * 100 + "; " + "y" * 50 + "… (+2 more)"
    assert _join_reasons(["x" * 300]) == "x" * 160 + "…"


def test_module_entry_point_json() -> None:
    cmd = [sys.executable, "-m", "hf_prune.app.cli", "analyze", *RESNET, "--json"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "ResNet" and data["groups"]
