"""ONNX export (Optimum's exporter on the optimum stack, torch.onnx's on the default one), dense and
stripped, transformers and timm, checked by ONNX Runtime."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hf_prune.algorithm.controller import has_pruning_masks
from hf_prune.integrations.onnx import OnnxExportError, check_onnx, export_onnx, exporter
from hf_prune.integrations.serialization import PrunedModelError, logits, save_pretrained

from test_serialization import images, pruned


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", ["hf_resnet", "timm_vit"])
def test_dense_and_stripped_exports_match_pytorch(tmp_path: Path, name: str) -> None:
    dense, _, small = pruned(name)
    sizes = []
    for model in (dense, small):
        path = export_onnx(model, tmp_path / str(len(sizes)))
        assert path == tmp_path / str(len(sizes)) / "model.onnx"
        x = images(model, 4)
        with torch.no_grad():
            np.testing.assert_allclose(onnx_logits(path, x), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)
        sizes.append(path.stat().st_size)
    assert sizes[1] < 0.8 * sizes[0]
    assert hasattr(small, "config") == name.startswith("hf_")  # Optimum's timm config went to a copy


def test_the_exporter_follows_the_installed_extra() -> None:
    optimum_installed = importlib.util.find_spec("optimum") is not None
    assert exporter() == ("optimum" if optimum_installed else "torch")
    import transformers

    assert optimum_installed == transformers.__version__.startswith("4.")  # the two stacks `make test` runs


def test_export_from_a_saved_directory(tmp_path: Path) -> None:
    _, _, small = pruned("hf_vit")
    save_pretrained(small, tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "onnx")
    assert check_onnx(small, path) < 1e-4


def test_masked_model_is_stripped_first_or_refused(tmp_path: Path) -> None:
    _, controller, small = pruned("timm_resnet")
    masked = controller.model
    with pytest.raises(PrunedModelError, match="cannot export a model whose pruning masks are still active"):
        export_onnx(masked, tmp_path / "refused")
    path = export_onnx(masked, tmp_path / "onnx", controller=controller)
    assert has_pruning_masks(masked)  # a stripped copy was exported; the model can go on training
    assert check_onnx(small, path) < 1e-4


def test_mismatch_fails_loudly(tmp_path: Path) -> None:
    _, _, small = pruned("timm_resnet")
    path = export_onnx(small, tmp_path / "onnx")
    other = copy.deepcopy(small)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(OnnxExportError, match=r"model\.onnx: ONNX Runtime's logits differ from PyTorch's by up to 1"):
        check_onnx(other, path)


def test_convnet_export_takes_other_image_sizes(tmp_path: Path) -> None:
    _, _, small = pruned("timm_resnet")
    path = export_onnx(small, tmp_path / "onnx")
    x = torch.randn(1, 3, 48, 40)  # neither the export's size nor its batch
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(small, x).numpy(), rtol=1e-4, atol=1e-4)


def test_dinov2_with_pruned_heads_exports(tmp_path: Path) -> None:
    """Optimum's DINOv2 dummy inputs read an image processor from the config's directory: a model built
    from a config (no processor anywhere) failed with an IndexError."""
    import hf_prune
    from transformers import Dinov2Config, Dinov2ForImageClassification

    model = Dinov2ForImageClassification(Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3)).eval()
    x = torch.randn(1, 3, 32, 32)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5, "channel_multiple": 1}},
                                              example_inputs={"pixel_values": x})
    ctrl.set_pruning_level(0.5)
    small = ctrl.strip_model(model, do_copy=True)
    queries = [p for n, p in small.dinov2.encoder.layer[0].named_parameters() if n.endswith(("query.weight", "q_proj.weight"))]
    assert [q.shape[0] for q in queries] == [16]  # 2 of 4 heads of width 8 kept
    path = export_onnx(small, tmp_path)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(small, x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(exporter() != "torch", reason="torch.onnx's dynamic shapes (Optimum exports fixed sizes)")
def test_model_without_a_symbolic_image_size_exports_at_its_own_size(tmp_path: Path) -> None:
    """torch.export cannot solve MobileViTV2's unfolding for a symbolic height and width: the export failed
    (NotImplementedError: the inequality ... cannot be solved); it now falls back to a dynamic batch only."""
    from transformers import MobileViTV2Config, MobileViTV2ForImageClassification

    model = MobileViTV2ForImageClassification(MobileViTV2Config(image_size=64, width_multiplier=0.5,
                                                                num_labels=3)).eval()
    path = export_onnx(model, tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)


def test_classifier_returning_last_hidden_state_exports(tmp_path: Path) -> None:
    """PP-LCNet's classifier returns its class scores as ``last_hidden_state`` (no ``logits``)."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "PPLCNetForImageClassification"):
        pytest.skip(f"transformers {transformers.__version__} has no PP-LCNet")
    from transformers import PPLCNetConfig, PPLCNetForImageClassification

    model = PPLCNetForImageClassification(PPLCNetConfig(num_labels=3)).eval()
    model.config.image_size = 64
    path = export_onnx(model, tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(exporter() != "optimum", reason="Optimum's exporter is not installed")
def test_architecture_optimum_does_not_know_exports_through_torch_onnx(tmp_path: Path) -> None:
    """Optimum has no ONNX config for DINOv2 with registers (it raised "custom or unsupported architecture")."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    model = Dinov2WithRegistersForImageClassification(Dinov2WithRegistersConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_labels=3)).eval()
    path = export_onnx(model, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)
