"""Masks act in the forward pass only: weights, names and state_dict stay as they are."""

from __future__ import annotations

import torch

import hf_prune
from conftest import randomize_norms
from models import build, first


def _controller(name="resnet18", level=None):
    model, inputs, logits = build(name)
    randomize_norms(model)
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    if level is not None:
        ctrl.set_pruning_level(level)
    return model, inputs, logits, ctrl


def test_all_masks_at_one_leave_outputs_unchanged():
    model, inputs, logits = build("resnet50")
    randomize_norms(model)
    with torch.no_grad():
        before = logits(model, inputs)
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    ctrl.set_pruning_level(0.0)
    with torch.no_grad():
        assert torch.equal(logits(model, inputs), before)
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        assert not torch.allclose(logits(model, inputs), before)


def test_weights_state_dict_and_parameters_untouched():
    model, inputs, logits = build("resnet18")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    ctrl.set_pruning_level(0.5)
    logits(model, inputs)
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items() if "running" not in k and "num_batches" not in k)
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())


def test_pruned_filters_get_zero_gradient():
    model, inputs, logits, ctrl = _controller("resnet18", level=0.5)
    model.train()
    logits(model, inputs).logsumexp(-1).sum().backward()
    params = dict(model.named_parameters())
    checked = 0
    for info in ctrl.pruned_modules:
        grad = params[info.param].grad.movedim(info.dim, 0)
        pruned, kept = ~info.mask, info.mask
        assert pruned.any()
        assert torch.count_nonzero(grad[pruned]) == 0, info.module_name
        assert torch.count_nonzero(grad[kept]) > 0, info.module_name
        checked += 1
    assert checked == len(ctrl.pruned_modules) > 0


def test_masks_follow_importance():
    model, inputs, logits, ctrl = _controller("resnet18", level=0.5)
    params = dict(model.named_parameters())
    for gid, group in ctrl.groups.items():
        (param, dim), *_ = [(m.param, m.dim) for m in group.members if m.role == "out"]
        if len(group.producers) != 1:
            continue
        norms = params[param].detach().movedim(dim, 0).flatten(1).norm(dim=1)
        mask = ctrl.group_masks()[gid]
        assert norms[mask].min() >= norms[~mask].max()


def test_strip_in_place_removes_hooks_and_keeps_outputs():
    model, inputs, logits, ctrl = _controller("mobilenetv2_100", level=0.5)
    with torch.no_grad():
        masked = logits(model, inputs)
    stripped = ctrl.strip_model(model)
    assert stripped is model
    assert not any(m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(logits(model, inputs), masked, rtol=1e-4, atol=1e-4)


def test_do_copy_keeps_original_masked():
    model, inputs, logits, ctrl = _controller("resnet18", level=0.5)
    shapes = [p.shape for p in model.parameters()]
    small = ctrl.strip_model(model, do_copy=True)
    assert [p.shape for p in model.parameters()] == shapes
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in small.modules())
