"""The core invariant on every supported architecture: stripped outputs == masked outputs."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from models import ALL_MODELS, HF_MODELS, TIMM_MODELS, build, first
from conftest import randomize_norms

# Architectures whose structure must yield prunable groups covering real FLOPs at 50% of filters.
MUST_SHRINK = set(TIMM_MODELS) | set(HF_MODELS) | {"test_resnet", "test_convnext", "test_vit", "test_efficientnet"}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_strip_is_exact_and_smaller(name):
    model, inputs, logits = build(name)
    randomize_norms(model)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=first(inputs))
    dense_params = _n_params(model)
    dense_shapes = [p.shape for p in model.parameters()]
    if name in MUST_SHRINK:
        assert ctrl.groups, f"{name}: no prunable group"
    for level in (0.3, 0.5):
        ctrl.set_pruning_level(level)
        with torch.no_grad():
            masked = logits(model, inputs)
            stripped = ctrl.strip_model(model, do_copy=True)
            out = logits(stripped, inputs)
        assert type(stripped) is type(model)
        assert out.shape == masked.shape
        scale = masked.abs().max().clamp_min(1e-6)
        assert (out - masked).abs().max() <= 1e-4 * scale, f"{name} at {level}: stripped != masked"
        # parameters: exactly what the FLOPs/params model predicted, and fewer when anything was pruned
        assert _n_params(stripped) == round(ctrl.current_params)
        if ctrl.levels_nonzero:
            assert _n_params(stripped) < dense_params
        # FLOPs of the stripped model, counted afresh with torch.utils.flop_counter formulas
        recount = hf_prune.analyze_model(stripped, first(inputs), verify=False).dense_flops
        assert recount == pytest.approx(ctrl.current_flops, rel=1e-6)
        if name in MUST_SHRINK and level == 0.5:
            assert recount < 0.9 * ctrl.analysis.dense_flops
    assert [p.shape for p in model.parameters()] == dense_shapes  # do_copy left the masked model whole


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "vit_tiny_patch16_224", "hf_vit", "hf_convnext"])
def test_stripped_model_trains(name):
    """A stripped model is an ordinary model: gradients flow and an optimizer step changes it."""
    model, inputs, logits = build(name)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=first(inputs))
    ctrl.set_pruning_level(0.5)
    small = ctrl.strip_model(model, do_copy=True).train()
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    before = [p.detach().clone() for p in small.parameters()]
    loss = logits(small, inputs).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, small.parameters()))


def test_train_mode_is_kept():
    model, inputs, _ = build("resnet18")
    model.train()
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    ctrl.set_pruning_level(0.5)
    assert model.training
    assert ctrl.strip_model(model, do_copy=True).training
    model.eval()
    assert not ctrl.strip_model(model, do_copy=True).training
