"""Layers that used to be refused, on real timm / torchvision models: each is pruned with an exact strip
(stripped == masked) or refused with a reason a user understands."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

import hf_prune
from conftest import randomize_norms


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
def _bit() -> nn.Module:
    """BiT (``resnetv2_50x1_bit``'s definition: StdConv2d with eps 1e-8, GroupNorm of 32 groups), one block per
    stage and half the widths."""
    return ResNetV2(layers=[1, 1, 1, 1], channels=(128, 256, 512, 1024), stem_chs=32, stem_type="fixed",
                    conv_layer=partial(StdConv2d, eps=1e-8), num_classes=10).eval()


def test_weight_standardized_convs_prune_inputs_and_outputs_exactly():
    """StdConv2d standardizes each filter over inputs × kernel: the masked layer takes its statistics over the
    kept inputs only, so input channels of standardized convs are pruned and the strip is exact."""
    model, x = _bit(), torch.randn(2, 3, 64, 64)
    ctrl, masked, stripped = _pruned(model, x)
    assert len(_consumers(ctrl, StdConv2d)) >= 6  # every bottleneck's conv2 and conv3 read pruned channels
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
    model = timm.create_model("resnetv2_50d_gn", layers=[1, 1, 1, 1], channels=(128, 256, 512, 1024), stem_chs=64,
                              num_classes=10).eval()
    ctrl, _, stripped = _pruned(model, torch.randn(2, 3, 64, 64))
    norms = {n for g in ctrl.groups.values() for m in g.members if m.role == "channel"
             and isinstance(model.get_submodule(n := m.module), nn.GroupNorm)}
    assert len(norms) >= 8
    assert _n_params(stripped) / _n_params(model) < 0.7
    for name in norms:
        dense, small = model.get_submodule(name), stripped.get_submodule(name)
        assert small.num_channels < dense.num_channels
        assert small.num_channels // small.num_groups == dense.num_channels // dense.num_groups  # whole groups
