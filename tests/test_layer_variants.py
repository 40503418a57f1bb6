"""Layers that used to be refused, on real timm / torchvision models: each is pruned with an exact strip
(stripped == masked) or refused with a reason a user understands."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import StdConv2d
from torch import nn

import hf_prune
from conftest import randomize_norms
from models import HF_MODELS, TIMM_SMALL


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _pruned(model: nn.Module, x: torch.Tensor, level: float = 0.3, **params):
    """(controller, masked outputs, stripped model) at ``level``, after checking stripped == masked and
    that the stripped model has the parameters the controller predicted."""
    randomize_norms(model)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5, **params}},
                                              example_inputs=x[:1])
    ctrl.set_pruning_level(level)
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = stripped(x)
    assert type(stripped) is type(model)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max(), "stripped != masked"
    assert _n_params(stripped) == round(ctrl.current_params) < _n_params(model)
    return ctrl, masked, stripped


def _consumers(ctrl, cls: type) -> set[str]:
    """Layers of class ``cls`` whose input channels a prunable group removes."""
    return {m for g in ctrl.groups.values() for m in g.consumers if isinstance(ctrl.model.get_submodule(m), cls)}


# ---------------------------------------------------------------------------------------- weight standardization
def test_weight_standardized_convs_prune_inputs_and_outputs_exactly():
    """StdConv2d standardizes each filter over inputs × kernel: the masked layer takes its statistics over the
    kept inputs only, so input channels of standardized convs are pruned and the strip is exact."""
    model, x = TIMM_SMALL["timm_bit"]().eval(), torch.randn(2, 3, 64, 64)
    ctrl, masked, stripped = _pruned(model, x)
    assert len(_consumers(ctrl, StdConv2d)) >= 16  # every bottleneck's conv2 and conv3 read pruned channels
    assert _n_params(stripped) / _n_params(model) < 0.9
    assert not any("computed in forward" in r for rs in ctrl.analysis.unprunable_layers.values() for r in rs)
    # the zeros format (NNCF's export) computes the same function, and so does the model after prepare_for_export
    with torch.no_grad():
        zeros = ctrl.strip_model(model, do_copy=True, strip_format="zeros")
        torch.testing.assert_close(zeros(x), masked, rtol=1e-4, atol=1e-5)
        ctrl.prepare_for_export()
        torch.testing.assert_close(model(x), masked, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ctrl.strip_model(model, do_copy=True)(x), masked, rtol=1e-4, atol=1e-5)


def test_scaled_weight_standardization_trains_like_the_stripped_model():
    """NFNet's ScaledStdConv2d (gain, fan-in scale): exact strip, and the masked model's gradients on kept
    weights are the stripped model's, so training under masks trains the model that will be kept."""
    from timm.layers import ScaledStdConv2d

    model, x = timm.create_model("test_nfnet", num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    ctrl, _, stripped = _pruned(model, x)
    consumers = _consumers(ctrl, ScaledStdConv2d)
    assert len(consumers) >= 8
    assert _n_params(stripped) / _n_params(model) < 0.75
    name = sorted(consumers)[0]
    model(x).square().mean().backward()
    stripped(x).square().mean().backward()
    dense_grad, small_grad = model.get_submodule(name).weight.grad, stripped.get_submodule(name).weight.grad
    kept_out, kept_in = (ctrl.param_dim_mask(f"{name}.weight", d) for d in (0, 1))
    assert not bool(kept_in.all())
    torch.testing.assert_close(dense_grad[kept_out][:, kept_in], small_grad, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- GroupNorm
def test_groupnorm_prunes_whole_groups():
    """GroupNorm's statistics are per group: whole groups are pruned, ``num_groups`` follows."""
    model = TIMM_SMALL["timm_resnetv2_gn"]().eval()
    ctrl, _, stripped = _pruned(model, torch.randn(2, 3, 64, 64))
    norms = {n for g in ctrl.groups.values() for m in g.members if m.role == "channel"
             and isinstance(model.get_submodule(n := m.module), nn.GroupNorm)}
    assert len(norms) >= 8
    assert _n_params(stripped) / _n_params(model) < 0.7
    for name in norms:
        dense, small = model.get_submodule(name), stripped.get_submodule(name)
        assert small.num_channels < dense.num_channels
        assert small.num_channels // small.num_groups == dense.num_channels // dense.num_groups  # whole groups


# ---------------------------------------------------------------------------------------------------- splits
def _split_model(name: str) -> nn.Module:
    if name == "hf_focalnet":
        return HF_MODELS["hf_focalnet"]()
    if name == "timm_focalnet":
        from timm.models.focalnet import FocalNet

        return FocalNet(depths=(1, 1, 1, 1), embed_dim=16, num_classes=10)
    return timm.create_model("skresnet18", num_classes=10)


@pytest.mark.parametrize("name", ["hf_focalnet", "timm_focalnet", "timm_sknet"])
def test_split_sizes_follow_the_strip(tmp_path, name):
    """Splits sized by the code from a width: FocalNet's ``(C, C, levels)`` (``C`` the input's width in
    transformers, ``self.input_split`` in timm), the selective kernel's ``in_channels // paths``. Their pieces
    prune and the stripped module splits at the kept sizes (the strip check refused them: "split_with_sizes
    expects split_sizes to sum exactly to ..."); transformers' FocalNet downsamples with patch embeddings that
    check their input's width (``num_channels`` follows it); a reload splits alike."""
    from hf_prune.graph.reshapes import ATTR
    from hf_prune.integrations.serialization import from_pretrained, save_pretrained

    def logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=x).logits if name.startswith("hf") else m(x)

    torch.manual_seed(0)
    model, x = randomize_norms(_split_model(name).eval()), torch.randn(2, 3, 64, 64)
    inputs = {"pixel_values": x[:1]} if name.startswith("hf") else x[:1]
    params = {"pruning_target": 0.5, "prune_first_conv": True, "prune_downsample_convs": True}
    ctrl = hf_prune.create_pruning_controller(model, {"params": params}, example_inputs=inputs)
    assert not [r for rs in ctrl.analysis.unprunable_layers.values() for r in rs if "split" in r and "fails" in r]
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = logits(model, x)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = logits(stripped, x)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max(), "stripped != masked"
    assert _n_params(stripped) == round(ctrl.current_params) < 0.75 * _n_params(model)
    if name.startswith("timm"):  # sizes from attributes the strip leaves: the splits are resized
        assert any(any(k.startswith("split") for k in getattr(m, ATTR, None) or {}) for m in stripped.modules())
    if name.endswith("focalnet"):  # (q, context) pieces pruned
        split = "focalnet.encoder.stages.0.layers.0.modulation.projection_in" if name == "hf_focalnet" \
            else "layers.0.blocks.0.modulation.f"
        assert stripped.get_submodule(split).weight.shape[0] < model.get_submodule(split).weight.shape[0]
    if name == "hf_focalnet":
        downsample = stripped.focalnet.encoder.stages[0].downsample
        assert downsample.num_channels == downsample.projection.in_channels < 16
    if name == "timm_focalnet":
        return  # built from its class (timm's entry points fix its depths): not a model hf_prune saves
    save_pretrained(stripped, tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(logits(from_pretrained(tmp_path / "model").eval(), x), out)


def test_a_pointwise_convolution_over_channels_keeps_them_apart():
    """CoaT aggregates its three scales with ``Conv1d(3, 1, kernel_size=1)`` over (batch, scales, channels): the
    channels are the convolution's spatial axis, but a 1×1 kernel computes each position alone, so they prune
    (were blocked, "convolved over as a spatial axis"), and its FLOPs follow them."""
    model = timm.create_model("coat_tiny", num_classes=10, img_size=64, serial_depths=[1, 1, 1, 1], parallel_depth=1,
                              embed_dims=[32, 32, 32, 32]).eval()
    x = torch.randn(2, 3, 64, 64)
    ctrl, _, stripped = _pruned(model, x, level=0.5, channel_multiple=1, prune_first_conv=True,
                                prune_downsample_convs=True)  # the patch embeddings set the widths
    assert not [r for rs in ctrl.analysis.unprunable_layers.values() for r in rs if "spatial axis" in r]
    head = next(g for g in ctrl.groups.values() if any(m.param == "head.weight" and m.role == "in" for m in g.members))
    assert head.prunable and stripped.head.in_features < model.head.in_features
    recount = hf_prune.analyze_model(stripped, x[:1], verify=False).dense_flops
    assert recount == pytest.approx(ctrl.current_flops, rel=1e-6)


# ---------------------------------------------------------------------------------------------------- (c)
def test_res2net_equal_chunks_shrink_together():
    """Res2Net splits its bottleneck into ``scale`` chunks of ``width`` channels (``torch.split(x, self.width)``),
    processes and concatenates them: all chunks keep the same channels and ``width`` is resized."""
    model = TIMM_SMALL["timm_res2net"]().eval()
    ctrl, _, stripped = _pruned(model, torch.randn(2, 3, 64, 64))
    block = "layer1.0"
    assert any(g.producers == [f"{block}.conv1"] for g in ctrl.groups.values())  # the chunked bottleneck width
    assert stripped.get_submodule(block).width < model.get_submodule(block).width == 26
    assert stripped.get_submodule(f"{block}.conv1").out_channels == 4 * stripped.get_submodule(block).width
    assert _n_params(stripped) / _n_params(model) < 0.9


def test_shufflenet_keeps_working_and_says_why_its_stage_widths_stay():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    ctrl, _, stripped = _pruned(model, torch.randn(2, 3, 64, 64))
    assert len(ctrl.groups) >= 16  # the inner width of every branch
    assert _n_params(stripped) / _n_params(model) < 0.85
    reasons = ctrl.analysis.unprunable_layers["stage2.0.branch2.5"]
    assert any("split by a reshape in stage2.0 (InvertedResidual)" in r for r in reasons)  # the channel shuffle


def test_repvgg_before_and_after_reparameterization():
    """A RepVGG stage's width is tied to its stride-2 first block by the identity branches (refused under NNCF's
    default prune_downsample_convs=false, saying so); with it, the pruned training-time model still
    re-parameterizes exactly; the re-parameterized model prunes its stride-1 blocks by default."""
    from timm.utils.model import reparameterize_model

    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(hf_prune.NothingPrunableError, match="prune_downsample_convs=false"):
        hf_prune.create_pruning_controller(timm.create_model("repvgg_a0", num_classes=10).eval(), None,
                                           example_inputs=x[:1])
    model = timm.create_model("repvgg_a0", num_classes=10).eval()
    ctrl, _, stripped = _pruned(model, x, prune_downsample_convs=True)
    assert _n_params(stripped) / _n_params(model) < 0.6
    with torch.no_grad():
        before = stripped(x)
        fused = reparameterize_model(stripped)
        torch.testing.assert_close(fused(x), before, rtol=1e-4, atol=1e-5)

    fused_dense = reparameterize_model(timm.create_model("repvgg_a0", num_classes=10).eval())
    ctrl, _, stripped = _pruned(fused_dense, x)
    assert len(ctrl.groups) >= 16
    assert _n_params(stripped) / _n_params(fused_dense) < 0.65


def test_transposed_convs_prune_exactly():
    """BEiT's segmentation FPN upsamples with ConvTranspose2d (weight: in × out): its filters are pruned."""
    from transformers import BeitConfig, BeitForSemanticSegmentation

    model = BeitForSemanticSegmentation(BeitConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        out_indices=[1, 2, 3, 4], num_labels=5, auxiliary_channels=32, pool_scales=[1, 2])).eval()
    x = torch.randn(2, 3, 32, 32)
    randomize_norms(model)
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs={"pixel_values": x[:1]})
    transposed = {p for g in ctrl.groups.values() for p in g.producers
                  if isinstance(model.get_submodule(p), nn.ConvTranspose2d)}
    assert len(transposed) == 3  # fpn1's two and fpn2's (named differently in transformers 4 and 5)
    ctrl.set_pruning_level(0.3)
    with torch.no_grad():
        masked = model(pixel_values=x).logits
        stripped = ctrl.strip_model(model, do_copy=True)
        torch.testing.assert_close(stripped(pixel_values=x).logits, masked, rtol=1e-4, atol=1e-5)
    assert all(stripped.get_submodule(p).out_channels < model.get_submodule(p).out_channels for p in transposed)
    assert _n_params(stripped) == round(ctrl.current_params)


def test_channel_convolving_attention_is_refused_with_its_reason():
    """ECA attention runs a 1-d convolution along the channels (each gate reads its neighbours): the channels
    it gates stay, saying so; the bottlenecks' inner widths still prune."""
    model = timm.create_model("ecaresnet26t", num_classes=10).eval()
    analysis = hf_prune.analyze_model(model, torch.randn(1, 3, 64, 64))
    assert analysis.prunable_groups
    reasons = analysis.unprunable_layers["layer1.0.conv3"]
    assert "convolved over as a spatial axis by aten.convolution in layer1.0.se.conv" in reasons


# ---------------------------------------------------------------------------------------------------- repeat
class ProbeTokens(nn.Module):
    """A learned token repeated over the batch and put before the patch tokens (SigLIP's attention-pooling
    probe, a class token made with ``repeat``), or the patch tokens tiled along their channels."""

    def __init__(self, tile_channels: bool = False) -> None:
        super().__init__()
        self.tile_channels = tile_channels
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.probe = nn.Parameter(torch.randn(1, 1, 16))
        self.fc = nn.Linear(32 if tile_channels else 16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        if self.tile_channels:
            tokens = tokens.repeat(1, 1, 2)
        else:
            tokens = torch.cat([self.probe.repeat(x.shape[0], 1, 1), tokens], dim=1)
        return self.head(torch.relu(self.fc(tokens)).mean(1))


def test_a_token_repeated_over_the_batch_keeps_its_channels_prunable():
    model, x = ProbeTokens().eval(), torch.randn(2, 3, 16, 16)
    ctrl, _, stripped = _pruned(model, x, level=0.5, prune_first_conv=True, prune_downsample_convs=True)
    assert stripped.probe.shape[-1] == stripped.stem.out_channels < 16


def test_channels_tiled_by_repeat_are_refused_with_the_reason():
    model = ProbeTokens(tile_channels=True).eval()
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5, "prune_first_conv": True, "prune_downsample_convs": True}},
                                              example_inputs=torch.randn(1, 3, 16, 16), allow_nothing_prunable=True)
    reasons = ctrl.analysis.unprunable_layers["stem"]
    assert any(r.startswith("tiled by aten.repeat") for r in reasons), reasons
