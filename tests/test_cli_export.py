"""``hf-prune export`` and ``hf-prune stats`` on saved models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hf_prune.app.cli import main
from hf_prune.integrations.serialization import save_pretrained

from test_serialization import pruned


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stripped timm ResNet saved by hf_prune."""
    directory = tmp_path_factory.mktemp("cli") / "model"
    save_pretrained(pruned("timm_resnet")[2], directory)
    return directory


def test_export_onnx(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(saved), "--onnx", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert "ONNX Runtime outputs match PyTorch" in capsys.readouterr().out


def test_export_at_a_fixed_image_size(saved: Path, tmp_path: Path) -> None:
    """``--fixed-image-size``: the ONNX input has a dynamic batch and the model's own height and width."""
    import onnxruntime as ort

    assert main(["export", str(saved), "--onnx", str(tmp_path / "onnx"), "--fixed-image-size"]) == 0
    shape = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, 160, 160]  # test_resnet's input size


def test_export_requires_an_output(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", str(saved)])
    assert info.value.code == 2 and "--onnx" in capsys.readouterr().err


def test_stats_table(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "ResNet, timm" in out and "FLOPs" in out and "Params" in out and "→" in out
    assert "Width per stage" in out and "layer1" in out and "level 0.500 (target 0.500 of filters)" in out


def test_stats_json(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(saved), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["library"] == "timm" and stats["model_class"] == "ResNet"
    assert stats["flops"]["after"] < stats["flops"]["before"]
    assert stats["params"]["after"] < stats["params"]["before"]
    assert stats["pruning_config"]["pruning_init"] == 0.5


@pytest.mark.parametrize("command", ["stats", "export"])
def test_bad_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    args = [command, str(tmp_path)] + (["--onnx", str(tmp_path / "onnx")] if command == "export" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing config.json" in err and "Traceback" not in err


def test_a_missing_extra_is_named(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the `onnx` extra were not installed
    assert main(["export", str(saved), "--onnx", str(tmp_path / "onnx")]) == 2
    assert "hf-prune export needs onnxruntime, which is not installed: pip install 'hf_prune[onnx]'" in \
        capsys.readouterr().err
