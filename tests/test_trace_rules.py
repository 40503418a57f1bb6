"""Channel rules users register for ops the analysis does not know: the layers around them become prunable
and strip exactly."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import hf_prune
from hf_prune.graph import trace
from conftest import randomize_norms


@torch.library.custom_op("hf_prune_test::fused_silu", mutates_args=())
def fused_silu(x: torch.Tensor) -> torch.Tensor:
    """A fused activation kernel, as a custom op: the trace sees one op it has no rule for."""
    return x * torch.sigmoid(x)


class FusedSiLU(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_silu(x)


class CumsumNet(nn.Module):
    """aten.cumsum along the width: a real op with no built-in channel rule."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.cumsum(self.a(x), dim=3)).mean((2, 3)))


def _cumsum_rule(tracer, func, args, kwargs, out):
    x, dim = tracer.info(args[0]), args[1] % args[0].dim()
    tracer.table.block_label(x.labels[dim], f"summed along by {tracer.where('aten.cumsum')}")
    tracer.set(out, list(x.labels))


@pytest.fixture
def rules(monkeypatch):
    """The rule table as it is now, restored after the test."""
    monkeypatch.setattr(trace, "CHANNEL_RULES", dict(trace.CHANNEL_RULES))


def _strips_exactly(model: nn.Module, x: torch.Tensor, **params) -> hf_prune.FilterPruningController:
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5, **params}},
                                              example_inputs=x[:1])
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = model(x)
        small = ctrl.strip_model(model, do_copy=True)
        stripped = small(x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(stripped, masked, rtol=1e-4, atol=1e-5)
    return ctrl


def test_custom_op_needs_a_rule_then_prunes_like_its_aten_twin(rules):
    x = torch.randn(2, 3, 32, 32)
    model = randomize_norms(timm.create_model("test_resnet", act_layer=FusedSiLU, num_classes=10)).eval()
    analysis = hf_prune.analyze_model(model, x[:1])
    reasons = [r for rs in analysis.unprunable_layers.values() for r in rs]
    assert any("hf_prune_test.fused_silu" in r and "no channel rule (hf_prune.register_channel_rule)" in r
               and "layer1" in r for r in reasons), reasons

    hf_prune.register_channel_rule(torch.ops.hf_prune_test.fused_silu, "pointwise")
    twin = randomize_norms(timm.create_model("test_resnet", act_layer=nn.SiLU, num_classes=10)).eval()
    groups = hf_prune.analyze_model(model, x[:1]).prunable_groups
    assert groups and [g.size for g in groups] == [g.size for g in hf_prune.analyze_model(twin, x[:1]).prunable_groups]
    _strips_exactly(model, x)


def test_a_function_rule_for_an_aten_op(rules):
    x = torch.randn(2, 3, 12, 12)
    params = {"prune_first_conv": True, "channel_multiple": 1}
    ctrl = hf_prune.create_pruning_controller(CumsumNet(), {"params": {"pruning_target": 0.5, **params}},
                                              example_inputs=x[:1])
    assert not _pruned(ctrl, "a")
    assert any("aten.cumsum in <model>, which has no channel rule (hf_prune.register_channel_rule)" in r
               for r in ctrl.analysis.unprunable_layers["a"]), ctrl.analysis.unprunable_layers
    hf_prune.register_channel_rule(torch.ops.aten.cumsum, _cumsum_rule)
    assert _pruned(_strips_exactly(CumsumNet(), x, **params), "a")


def _pruned(ctrl: hf_prune.FilterPruningController, module: str) -> bool:
    return any(m.module == module and m.role == "out" for g in ctrl.groups.values() for m in g.members)


def test_bad_registrations_are_refused(rules):
    with pytest.raises(ValueError, match="unknown channel rule 'pointwize'; did you mean 'pointwise'"):
        hf_prune.register_channel_rule(torch.ops.aten.cumsum, "pointwize")
    with pytest.raises(TypeError, match="op must be an operator"):
        hf_prune.register_channel_rule("aten.cumsum", "pointwise")
    with pytest.raises(ValueError, match="variant of aten.native_batch_norm"):
        hf_prune.register_channel_rule(torch.ops.aten.cudnn_batch_norm, "identity")
