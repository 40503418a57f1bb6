"""What the analysis decides does not depend on device, dtype, memory format or the kernel an op picks.

These run on the CPU; tests/test_gpu.py repeats the comparison on CUDA where one is present.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import hf_prune
from hf_prune.graph import canonical
from conftest import randomize_norms

aten = torch.ops.aten
CONFIG = {"params": {"pruning_target": 0.5}}


def _resnet() -> nn.Module:
    return randomize_norms(timm.create_model("test_resnet.r160_in1k", num_classes=10)).eval()


def _structure(analysis: hf_prune.ModelAnalysis) -> list[tuple]:
    """Groups as comparable data: members, sizes, prunability and reasons."""
    return [(tuple(sorted((m.param, m.dim, m.role) for m in g.members)), g.size, g.prunable, tuple(g.reasons))
            for g in analysis.groups]


class _BackendVariants(TorchDispatchMode):
    """Runs BatchNorm and convolution through other ATen variants, as other backends would (cuDNN and
    MIOpen pick ``cudnn_batch_norm`` / ``miopen_batch_norm``; oneDNN ``mkldnn_convolution``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is aten._native_batch_norm_legit_no_training:
            return aten._batch_norm_no_update(*args[:7])[:3]
        if func.overloadpacket is aten.convolution and not args[6]:
            x, w, b, stride, padding, dilation, _, _, groups = args[:9]
            return aten.mkldnn_convolution(x.contiguous(), w.contiguous(), b, padding, stride, dilation, groups)
        return func(*args, **kwargs)


def _under_variants(model: nn.Module) -> nn.Module:
    """``model`` whose forward runs under :class:`_BackendVariants`, entered inside the analysis' trace so
    the trace sees the variant ops."""
    mode = _BackendVariants()

    def enter(module, args):
        mode.__enter__()

    def leave(module, args, output):
        mode.__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    return model


def test_backend_op_variants_give_the_same_groups(monkeypatch):
    x = torch.randn(1, 3, 160, 160)
    plain = hf_prune.analyze_model(_resnet(), x)
    assert plain.prunable_groups
    variants = hf_prune.analyze_model(_under_variants(_resnet()), x)
    assert _structure(variants) == _structure(plain)
    assert variants.dense_flops == plain.dense_flops
    # without the canonicalization table the variant ops block every group: the test can fail
    monkeypatch.setattr(canonical, "OP_VARIANTS", {})
    bare = hf_prune.analyze_model(_under_variants(_resnet()), x)
    assert not bare.prunable_groups
    reasons = {r for whys in bare.unprunable_layers.values() for r in whys}
    assert any("no channel rule" in r and ("mkldnn_convolution" in r or "_batch_norm_no_update" in r) for r in reasons), reasons


def test_register_op_variant_unblocks_a_custom_op(monkeypatch):
    monkeypatch.setattr(canonical, "OP_VARIANTS", dict(canonical.OP_VARIANTS))
    lib = torch.library.Library("hfprune_test", "DEF")
    lib.define("scale_channels(Tensor x, Tensor w) -> Tensor")
    lib.impl("scale_channels", lambda x, w: x * w, "CompositeExplicitAutograd")

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)

        def forward(self, x):
            return torch.ops.hfprune_test.scale_channels(x, self.weight)

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(1, 3, 12, 12)
    config = {"params": {"pruning_target": 0.5, "prune_first_conv": True, "channel_multiple": 1}}
    with pytest.raises(hf_prune.NothingPrunableError, match="hfprune_test.scale_channels"):
        hf_prune.create_pruning_controller(model, config, example_inputs=x)

    hf_prune.register_op_variant(torch.ops.hfprune_test.scale_channels, aten.mul.Tensor)  # same arguments as x * w
    ctrl = hf_prune.create_pruning_controller(model, config, example_inputs=x)
    assert any("1.weight" in {m.param for m in g.members} for g in ctrl.groups.values())


def test_dtypes_and_memory_formats_give_the_same_analysis():
    x = torch.randn(1, 3, 160, 160)
    reference = hf_prune.analyze_model(_resnet(), x)
    for dtype in (torch.bfloat16, torch.float16):
        model = _resnet().to(dtype)
        got = hf_prune.analyze_model(model, x)  # float32 example inputs for a half-precision model
        assert _structure(got) == _structure(reference), dtype
        assert got.dense_flops == reference.dense_flops
        assert next(model.parameters()).dtype == dtype  # the user's model is left as it was
    cl = hf_prune.analyze_model(_resnet().to(memory_format=torch.channels_last),
                                x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert _structure(cl) == _structure(reference)


def test_masks_and_strip_on_a_bfloat16_model():
    model = _resnet().to(torch.bfloat16)
    x = torch.randn(2, 3, 160, 160, dtype=torch.bfloat16)
    ctrl = hf_prune.create_pruning_controller(model, CONFIG, example_inputs=x[:1])
    reference = hf_prune.create_pruning_controller(_resnet(), CONFIG, example_inputs=x[:1].float())
    ctrl.set_pruning_level(0.5)
    reference.set_pruning_level(0.5)
    assert ctrl.current_flops == reference.current_flops
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = stripped(x)
    assert {p.dtype for p in stripped.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in stripped.parameters()) == round(ctrl.current_params)
    assert (out.float() - masked.float()).abs().max() <= 0.05 * masked.float().abs().max()


def test_meta_model_is_a_clear_error():
    with torch.device("meta"):
        model = timm.create_model("test_resnet.r160_in1k")
    with pytest.raises(hf_prune.AnalysisError, match="ResNet.*meta device"):
        hf_prune.create_pruning_controller(model, CONFIG, example_inputs=torch.randn(1, 3, 160, 160))


def test_nothing_prunable_is_an_error_naming_the_op():
    class CumsumNet(nn.Module):  # aten.cumsum mixes channels: no channel rule, every group blocked
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1)).mean((2, 3))

    x = torch.randn(1, 3, 12, 12)
    config = {"params": {"pruning_target": 0.5, "prune_first_conv": True}}
    with pytest.raises(hf_prune.NothingPrunableError) as e:
        hf_prune.create_pruning_controller(CumsumNet(), config, example_inputs=x)
    assert "CumsumNet (2 conv/linear layers)" in str(e.value) and "aten.cumsum" in str(e.value)
    assert "allow_nothing_prunable" in str(e.value)
    # no pruning asked for: no error
    hf_prune.create_pruning_controller(CumsumNet(), {"params": {"pruning_target": 0.0}}, example_inputs=x)


def test_compiled_model_follows_mask_changes():
    model = _resnet()
    x = torch.randn(2, 3, 160, 160)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=x[:1])
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
        for level in (0.5, 0.2):
            ctrl.set_pruning_level(level)
            eager = model(x)
            assert torch.allclose(compiled(x), eager, atol=1e-5), f"compiled model ignores masks at {level}"
    # a compiled model can be given to the controller directly
    ctrl2 = hf_prune.create_pruning_controller(compiled, CONFIG, example_inputs=x[:1])
    assert ctrl2.model is model and ctrl2.groups


def test_a_target_that_rounding_turns_into_nothing_is_an_error():
    x = torch.randn(1, 3, 160, 160)
    with pytest.raises(hf_prune.NothingPrunableError, match="pruning_target 0.02 removes no channel.*multiple 8"):
        hf_prune.create_pruning_controller(_resnet(), {"params": {"pruning_target": 0.02}}, example_inputs=x)
    ctrl = hf_prune.create_pruning_controller(_resnet(), {"params": {"pruning_target": 0.02, "channel_multiple": 1}},
                                              example_inputs=x)
    ctrl.set_pruning_level(0.02)
    assert ctrl.levels_nonzero


def test_in_place_activations_keep_channels_prunable_whatever_the_op_tags():
    """torch tags some per-element ops as pointwise in one release and not in another (hardtanh_ is untagged
    in torch 2.11, threshold_ in every release): the analysis must not depend on it."""

    class Acts(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(c, 16, 3, padding=1) for c in (3, 16, 16, 16, 16))
            self.acts = nn.ModuleList([nn.ReLU6(inplace=True), nn.Hardsigmoid(inplace=True), nn.LeakyReLU(0.1),
                                       nn.Threshold(0.1, 0.0, inplace=True)])
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            for conv, act in zip(self.convs, self.acts):
                x = act(conv(x))
            return self.head(self.convs[-1](x).mean((2, 3)))

    analysis = hf_prune.analyze_model(Acts(), torch.randn(1, 3, 8, 8))
    pruned_by = {m.module for g in analysis.prunable_groups for m in g.members if m.role == "out"}
    assert {"convs.1", "convs.2", "convs.3"} <= pruned_by, analysis.unprunable_layers


def test_analysis_of_a_model_under_a_controller_sees_the_unmasked_model():
    model, x = _resnet(), torch.randn(1, 3, 160, 160)
    before = hf_prune.analyze_model(model, x)
    ctrl = hf_prune.create_pruning_controller(model, CONFIG, example_inputs=x)
    ctrl.set_pruning_level(0.5)
    assert _structure(hf_prune.analyze_model(model, x)) == _structure(before)
