"""ONNX export (Optimum's exporter on the optimum stack, torch.onnx's on the default one), dense and
stripped, transformers and timm, checked by ONNX Runtime."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hf_prune.algorithm.controller import has_pruning_masks
from hf_prune.integrations.onnx import OnnxExportError, check_onnx, export_onnx, exporter
from hf_prune.integrations.serialization import PrunedModelError, logits, save_pretrained
from hf_prune.model_kind import random_images

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


def test_a_fixed_image_size_export_keeps_a_dynamic_batch(tmp_path: Path) -> None:
    """``dynamic_image_size=False`` (through torch.onnx on either stack): height and width are the model's own,
    the batch stays dynamic."""
    _, _, small = pruned("timm_resnet")
    path = export_onnx(small, tmp_path, dynamic_image_size=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == list(random_images(small, 1).shape[1:])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x = random_images(small, 3)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(small, x).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        onnx_logits(path, torch.randn(1, 3, 48, 40))


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


def test_export_rewrites_compute_what_the_model_does() -> None:
    """While torch.onnx traces, attention on other than 4-D tensors runs as 4-D attention and
    repeat_interleave by one count as a broadcast: the same numbers as the functions they replace."""
    import torch.nn.functional as F

    from hf_prune.integrations.onnx import _Translatable

    g = torch.Generator().manual_seed(0)
    q5, k5, v5 = (torch.randn(2, 3, 2, 5, 4, generator=g) for _ in range(3))  # batch × windows × heads
    q3, k3, v3 = (torch.randn(6, 5, 4, generator=g) for _ in range(3))  # SAM: (batch × heads) × tokens
    calls = [
        (F.scaled_dot_product_attention, (q5, k5, v5), {}),
        (F.scaled_dot_product_attention, (q5, k5, v5, torch.randn(3, 1, 5, 5, generator=g)), {}),
        (F.scaled_dot_product_attention, (q5, k5, v5), {"attn_mask": torch.rand(2, 1, 1, 5, 5, generator=g) > 0.3}),
        (F.scaled_dot_product_attention, (q5[:, :1], k5, v5), {"scale": 0.3}),  # broadcast windows
        (F.scaled_dot_product_attention, (q3, k3, v3, torch.randn(6, 5, 5, generator=g)), {}),
        (F.scaled_dot_product_attention, (q3, k3, v3), {"is_causal": True}),
        (torch.repeat_interleave, (q3, 2), {"dim": 1}),
        (torch.Tensor.repeat_interleave, (q3, 3), {"dim": -3}),
        (torch.Tensor.repeat_interleave, (q3, 2), {}),
        (torch.repeat_interleave, (q3, torch.tensor([1, 0, 2, 1, 1])), {"dim": 1}),
    ]
    for func, args, kwargs in calls:
        expected = func(*args, **kwargs)
        with _Translatable():
            got = func(*args, **kwargs)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def timm_model(name: str, **kwargs: object) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3, **kwargs).eval()


def exports_like_pytorch(model: torch.nn.Module, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path)
    x = random_images(model, 3)  # not the export's batch size
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(path, x), logits(model, x).numpy(), rtol=1e-4, atol=1e-4)


def test_windowed_attention_on_five_dims_exports(tmp_path: Path) -> None:
    """Hiera's mask-unit attention calls scaled_dot_product_attention on (batch, heads, windows, tokens,
    head_dim): torch.onnx refused it ("only 4D query, key, and value are supported")."""
    exports_like_pytorch(timm_model("hiera_tiny_224", img_size=(64, 64), embed_dim=16, num_heads=1,
                                    stages=(1, 1, 1, 1)), tmp_path)


def test_repeat_interleave_by_a_symbolic_count_exports(tmp_path: Path) -> None:
    """GC ViT repeats each image's global query once per window (``B // q_global.shape[0]`` times, a
    symbolic count): torch.onnx put the count on the wrong axis and ONNX Runtime failed for batches above 1
    ("Non-zero status code returned while running Expand node ... invalid expand shape")."""
    from timm.models import build_model_with_cfg
    from timm.models.gcvit import GlobalContextVit

    torch.manual_seed(0)
    model = build_model_with_cfg(GlobalContextVit, "gcvit_xxtiny", pretrained=False, depths=(1, 2, 1, 1),
                                 num_heads=(1, 1, 1, 1), embed_dim=16, img_size=64, num_classes=3).eval()
    exports_like_pytorch(model, tmp_path)


def test_clamps_of_one_input_export(tmp_path: Path) -> None:
    """Gemma 4's vision tower clamps each attention input three times (q, k and v projections) with
    constant bounds: torch.onnx's graph optimizer fused them into Clip nodes whose bounds it lost, and ONNX
    Runtime refused the model ("Node input 'mul_..._min_1' is not a graph input, initializer, or output")."""
    exports_like_pytorch(timm_model("gemma4_vit_167m_enc", img_size=48, embed_dim=32, depth=1, num_heads=2,
                                    head_dim=16, intermediate_size=64, position_embedding_size=16), tmp_path)


def _siglip2() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """SigLIP-2 with its processor's inputs: 16 patches per image, the second image padded (4 × 3 patches)."""
    from transformers import Siglip2Config, Siglip2ForImageClassification

    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4,
                  num_patches=16)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = Siglip2ForImageClassification(Siglip2Config(vision_config=vision, text_config=text, num_labels=3)).eval()
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    inputs = {"pixel_values": torch.randn(2, 16, 3 * 4 * 4), "pixel_attention_mask": mask,
              "spatial_shapes": torch.tensor([[4, 4], [4, 3]])}
    return model, inputs


@pytest.mark.skipif(int(importlib.metadata.version("transformers").split(".")[0]) < 5,
                    reason="transformers 4's SigLIP-2 interpolates its position embeddings to sizes read from the "
                           "values of spatial_shapes, which torch.export cannot trace")
def test_a_model_taking_more_than_images_exports_for_its_inputs(tmp_path: Path) -> None:
    """SigLIP-2 takes patches, their mask and the patch grid: exported for the inputs it is given (each with a
    dynamic batch). Traced on an unpadded image, its attention pool's heads are pruned; the pool repeats a
    padded batch's mask once per head, its own ``num_heads`` times (which failed the export before it followed)."""
    import hf_prune

    model, inputs = _siglip2()
    unpadded = {k: v[:1] for k, v in inputs.items()}
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5, "channel_multiple": 1}},
                                              example_inputs=unpadded)
    ctrl.set_pruning_level(0.5)
    small = ctrl.strip_model(model, do_copy=True)
    # transformers 4 passes the pool an all-ones mask, one matrix per head: its heads are then kept
    pool = next(g for g in ctrl.analysis.groups if g.attention == "vision_model.head.attention")
    assert small.vision_model.head.attention.num_heads == small.vision_model.head.num_heads == (2 if pool.prunable else 4)
    with torch.no_grad():  # the padded batch too
        torch.testing.assert_close(small(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)
    path = export_onnx(small, tmp_path, example_inputs=inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(inputs)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0],
                                   small(**inputs).logits.numpy(), rtol=1e-4, atol=1e-4)
