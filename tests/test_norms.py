"""Channels under normalization (LayerNorm, RMSNorm, GRN) are pruned exactly: while masks are active the norm
takes its statistics over the kept channels, as the stripped norm does (hf_prune.graph.norms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoModelForImageClassification, ConvNextV2Config, ConvNextV2ForImageClassification, ViTConfig,
    ViTForImageClassification,
)

import hf_prune
from hf_prune.graph.norms import norm_kind
from hf_prune.graph.surgery import resize_to_spec, shape_spec

from conftest import randomize_norms
from models import HF_MODELS

EMBEDDING = {"params": {"prune_first_conv": True, "prune_downsample_convs": True, "channel_multiple": 1}}
"""The patch embedding / stem is a first (and strided) convolution: NNCF's defaults keep its filters."""

MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {  # builder, image size
    "test_vit": (lambda: timm.create_model("test_vit", num_classes=10), 160),
    "test_vit_rmsnorm": (lambda: timm.create_model("test_vit", norm_layer="rmsnorm", num_classes=10), 160),
    "vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10), 64),
    "test_convnext": (lambda: timm.create_model("test_convnext", num_classes=10), 160),
    "convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10), 64),
    "convnextv2_atto": (lambda: timm.create_model("convnextv2_atto", num_classes=10), 64),
    "hf_vit": (lambda: ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10)), 32),
    "hf_clip": (HF_MODELS["hf_clip"], 32),  # position embeddings are an nn.Embedding: its width is pruned too
    "hf_convnextv2": (lambda: ConvNextV2ForImageClassification(ConvNextV2Config(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10)), 64),
    "timm_poolformer": (lambda: _timm_poolformer(), 64),  # GroupNorm with one group
    "hf_poolformer": (HF_MODELS["hf_poolformer"], 64),
}
VIT_FAMILY = {"test_vit", "test_vit_rmsnorm", "vit_tiny", "hf_vit", "hf_clip"}


def _timm_poolformer() -> nn.Module:
    from timm.layers import GroupNorm1
    from timm.models.metaformer import MetaFormer, Pooling

    return MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), token_mixers=Pooling, norm_layers=GroupNorm1,
                      use_mlp_head=False, num_classes=10)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x) if isinstance(model, nn.Module) and hasattr(model, "config") else model(x)
    return getattr(out, "logits", out)


def _inputs(model: nn.Module, x: torch.Tensor) -> Any:
    return {"pixel_values": x} if hasattr(model, "config") else x


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_exact(model: nn.Module, ctrl, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        masked = _logits(model, x)
        small = ctrl.strip_model(model, do_copy=True)
        out = _logits(small, x)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max().clamp_min(1e-6), "stripped != masked"
    return small


def _norm_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in model.named_modules() if norm_kind(m) and m.weight is not None}


def test_linear_under_layernorm_strips_exactly():
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4)).eval())
    x = torch.randn(4, 8)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"channel_multiple": 1}}, example_inputs=x[:1])
    group = next(g for g in ctrl.groups.values() if g.producers == ["0"])
    assert {(m.param, m.role) for m in group.members} >= {("1.weight", "channel"), ("1.bias", "channel")}
    ctrl.set_pruning_level(0.5)
    small = _assert_exact(model, ctrl, x)
    assert small[1].normalized_shape == (8,) and small[1].weight.shape == (8,) and small[0].out_features == 8
    with torch.no_grad():  # the norm's own output (statistics over every channel) is not what the strip computes
        ctrl._masker.remove()
        assert (model(x) - small(x)).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_embedding_dimension_is_pruned_exactly(name):
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = randomize_norms(build()).eval()
    x = torch.randn(2, 3, size, size)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs=_inputs(model, x[:1]))
    assert ctrl.analysis.trace.norms, "no normalization over channels was recognized"
    normalized = {r.module for r in ctrl.analysis.trace.norms}
    stem = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))  # patch embedding / stem
    group = next(g for g in ctrl.analysis.groups if stem in g.producers)
    assert group.prunable, group.reasons
    assert {m.module for m in group.members} & normalized, "the embedding group has no norm member"
    for level in (0.3, 0.5):
        ctrl.set_pruning_level(level)
        small = _assert_exact(model, ctrl, x)
        assert _params(small) == round(ctrl.current_params)
    widths, dense = _norm_widths(small), _norm_widths(model)
    assert any(widths[n] < dense[n] for n in normalized)
    for m in small.modules():
        if isinstance(m, nn.Embedding):
            assert (m.num_embeddings, m.embedding_dim) == tuple(m.weight.shape)
    ctrl.set_pruning_level(0.3)
    kept = _params(ctrl.strip_model(model, do_copy=True)) / _params(model)
    if name in VIT_FAMILY:
        assert kept <= 0.75, f"{name} keeps {kept:.2f} of its parameters at 30% of filters"


def test_grn_mlp_is_pruned():
    """ConvNeXt-V2's MLP hidden units under GRN ("reduced over by aten.mean in ...grn" before) are prunable
    with NNCF's defaults."""
    model = randomize_norms(timm.create_model("convnextv2_atto", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"channel_multiple": 1}}, example_inputs=x[:1])
    fc1 = next(g for g in ctrl.analysis.groups if g.producers == ["stages.0.blocks.0.mlp.fc1"])
    assert fc1.prunable, fc1.reasons
    assert "stages.0.blocks.0.mlp.grn.weight" in {m.param for m in fc1.members}
    ctrl.set_pruning_level(0.5)
    _assert_exact(model, ctrl, x)


def test_masked_norm_follows_new_masks():
    """Masks change in place over a schedule: the norm's statistics follow them."""
    model = randomize_norms(timm.create_model("test_vit", num_classes=10)).eval()
    x = torch.randn(2, 3, 160, 160)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs=x[:1])
    for level in (0.5, 0.2, 0.0):
        ctrl.set_pruning_level(level)
        _assert_exact(model, ctrl, x)


@pytest.mark.parametrize("name", ["test_vit", "convnextv2_atto"])
def test_timm_save_reload(tmp_path: Path, name: str):
    build, size = MODELS[name]
    model = randomize_norms(build()).eval()
    x = torch.randn(2, 3, size, size)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs=x[:1])
    ctrl.set_pruning_level(0.3)
    small = ctrl.strip_model(model, do_copy=True)
    hf_prune.save_pretrained(small, tmp_path / "m")
    loaded = hf_prune.from_pretrained(tmp_path / "m").eval()
    assert _norm_widths(loaded) == _norm_widths(small)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)


def test_transformers_save_reload(tmp_path: Path):
    build, size = MODELS["hf_vit"]
    model = randomize_norms(build()).eval()
    x = torch.randn(2, 3, size, size)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs={"pixel_values": x[:1]})
    ctrl.set_pruning_level(0.3)
    small = ctrl.strip_model(model, do_copy=True)
    assert small.vit.layernorm.normalized_shape[0] < model.config.hidden_size
    small.save_pretrained(tmp_path / "m")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, small(pixel_values=x).logits, rtol=0, atol=0)


class _FunctionalNorm(nn.Module):
    """A block normalizing with ``F.layer_norm`` inside its own forward (no norm module to mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.layer_norm(self.fc1(x), (16,)))


def test_statistics_outside_norm_modules_are_refused_with_the_reason():
    analysis = hf_prune.analyze_model(_FunctionalNorm().eval(), torch.randn(1, 8))
    assert any("normalized over by LayerNorm (aten.native_layer_norm in <model>)" in r
               for r in analysis.unprunable_layers["fc1"]), analysis.unprunable_layers


@pytest.mark.parametrize("norm", [lambda n: nn.LayerNorm(n, elementwise_affine=False),
                                  lambda n: nn.RMSNorm(n, elementwise_affine=False),
                                  lambda n: timm.layers.RmsNorm(n, affine=False)],  # gemma4_vit's final norm
                         ids=["LayerNorm", "RMSNorm", "timm RmsNorm"])
def test_norms_without_weight_are_pruned_and_reload(norm):
    """Their width is kept in ``normalized_shape`` only: the strip sets it, the shape spec records it."""
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), norm(32), nn.GELU(), nn.Linear(32, 4)).eval()

    torch.manual_seed(0)
    model, x = build(), torch.randn(3, 8)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=x[:1])
    assert [g.producers for g in ctrl.groups.values()] == [["0"]]
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        torch.testing.assert_close(stripped(x), masked, rtol=1e-5, atol=1e-6)
    assert stripped[1].normalized_shape == (16,)
    spec = shape_spec(stripped, model)
    assert spec["weightless_norms"] == {"1": 16}
    fresh = resize_to_spec(build(), spec)  # a reload: the dense model narrowed, the stripped weights loaded
    fresh.load_state_dict(stripped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), masked, rtol=1e-5, atol=1e-6)


def test_timm_attention_pool_keeps_the_width_reset_classifier_builds():
    """timm's ViT with an attention pool rebuilds its classifier at ``embed_dim``: the pool's output (under its
    own LayerNorm, prunable as such) and the residual it reads keep their width, with the reason."""
    model = timm.create_model("test_vit3").eval()
    analysis = hf_prune.analyze_model(model, torch.randn(1, 3, 160, 160),
                                      policy=hf_prune.graph.groups.PruningPolicy(True, True))
    reasons = {tuple(g.producers[:2]): g.reasons for g in analysis.groups}
    assert any("reset_classifier builds a classifier of embed_dim (96)" in r
               for r in reasons[("attn_pool.mlp.fc2", "attn_pool.proj")])
    assert any("channels read by attn_pool" in r for r in reasons[("blocks.0.attn.proj", "blocks.0.mlp.fc2")])
    assert reasons[("attn_pool.mlp.fc1",)] == []


def test_pruned_channels_get_no_gradient_through_the_norms():
    """Nothing downstream reads a pruned channel, the masked norms' statistics included: its filters get zero
    gradient (as everywhere else in hf_prune), the kept ones do not."""
    model = randomize_norms(timm.create_model("test_vit", num_classes=10)).eval()
    x = torch.randn(2, 3, 160, 160)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs=x[:1])
    ctrl.set_pruning_level(0.5)
    info = next(i for i in ctrl.pruned_module_groups_info.get_all_nodes() if i.param == "patch_embed.proj.weight")
    model(x).logsumexp(-1).sum().backward()
    grad = model.patch_embed.proj.weight.grad.flatten(1).abs().sum(1)
    keep = ctrl.get_mask(info)
    assert not keep.all() and bool((grad[~keep] == 0).all()) and bool((grad[keep] > 0).all())


def test_norm_hooks_are_installed_by_the_first_apply():
    """One ``WeightMasker.apply`` installs both the weight masks and the masked norms."""
    from hf_prune.algorithm.masks import WeightMasker
    from hf_prune.graph.norms import NormRecord

    norm = nn.LayerNorm(8)
    model = nn.Sequential(nn.Linear(4, 8), norm, nn.Linear(8, 2)).eval()
    keep = torch.arange(8) < 6
    masker = WeightMasker()
    masker.apply(model, {"2.weight": keep.float().reshape(1, -1)}, norms={"1": (NormRecord("1", "LayerNorm", 1, ()), keep)})
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = F.linear(F.layer_norm(model[0](x)[:, keep], (6,), norm.weight[keep], norm.bias[keep]),
                            model[2].weight[:, keep], model[2].bias)
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("norm", ["RmsNormAct2d", "LayerNormAct2d"])
def test_timm_norm_and_activation_modules_are_pruned_exactly(norm):
    """timm's norm-and-activation modules apply their activation after the statistics: computed over the kept
    channels, the activation follows (MobileNetV5's blocks: no prunable group at all before)."""
    from timm import layers

    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 16, 3), getattr(layers, norm)(16, act_layer=nn.GELU),
                                          nn.Conv2d(16, 4, 1)).eval())
    x = torch.randn(2, 3, 8, 8)
    ctrl = hf_prune.create_pruning_controller(model, EMBEDDING, example_inputs=x[:1])
    assert [g.producers for g in ctrl.groups.values()] == [["0"]]
    ctrl.set_pruning_level(0.5)
    small = _assert_exact(model, ctrl, x)
    assert small[1].normalized_shape == (8,)


def test_imagegpt_layernorm_is_an_rmsnorm():
    """ImageGPT's ``ImageGPTLayerNorm`` subtracts no mean: computed over the kept channels as an RMSNorm, its
    residual width is pruned exactly (taken for a LayerNorm, the strip check refused it)."""
    from transformers import ImageGPTConfig, ImageGPTForImageClassification

    torch.manual_seed(0)
    model = randomize_norms(ImageGPTForImageClassification(ImageGPTConfig(
        n_embd=32, n_layer=2, n_head=2, n_positions=16, vocab_size=17, num_labels=3)).eval())
    assert norm_kind(model.transformer.ln_f) == "RMSNorm"
    ids = torch.randint(0, 16, (2, 16))
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"channel_multiple": 1}}, example_inputs={"input_ids": ids[:1]})
    residual = next(g for g in ctrl.analysis.groups if any(m.param == "transformer.wte.weight" for m in g.members))
    assert residual.prunable, residual.reasons
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        small = ctrl.strip_model(model, do_copy=True)
        torch.testing.assert_close(small(input_ids=ids).logits, masked, rtol=1e-4, atol=1e-5)
    assert small.transformer.wte.weight.shape[1] < 32
