"""The epoch/freeze mechanics of the schedules on a real controller (the levels themselves are checked
against NNCF 2.19's own values in test_nncf_conformance.py)."""

from __future__ import annotations

import math

import pytest
import torch

import hf_prune
from models import build, first


def test_epoch_steps_recompute_masks_from_weights_until_frozen():
    model, inputs, _ = build("resnet18")
    cfg = {"params": {"schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 3}}
    ctrl = hf_prune.create_pruning_controller(model, cfg, example_inputs=first(inputs))
    ctrl.scheduler.epoch_step()  # epoch 0: level p0 = 0
    assert ctrl.compression_rate == 0 and ctrl.compression_stage() == 0
    ctrl.scheduler.epoch_step()  # epoch 1
    mid = ctrl.pruning_level
    assert 0 < mid < 0.5 and ctrl.compression_stage() == 1
    gid = next(iter(ctrl.groups))
    info = next(i for i in ctrl.pruned_modules if i.group_id == gid)
    weight = model.get_submodule(info.module_name).weight
    before = ctrl.group_masks()[gid].clone()
    with torch.no_grad():  # make the currently pruned filters the strongest
        weight.movedim(info.dim, 0)[~before] *= 1000
    ctrl.scheduler.epoch_step()  # epoch 2 = S: target reached; masks recomputed from the new weights
    after = ctrl.group_masks()[gid]
    assert ctrl.pruning_level == pytest.approx(0.5) and ctrl.compression_stage() == 2
    assert (after & ~before).any()
    ctrl.scheduler.epoch_step()  # epoch 3 = freeze epoch
    frozen = ctrl.group_masks()[gid].clone()
    with torch.no_grad():
        weight.movedim(info.dim, 0)[frozen] *= 1e-6
    ctrl.scheduler.epoch_step()
    with pytest.warns(UserWarning, match="frozen"):
        ctrl.set_pruning_level(0.1)  # ignored once frozen
    assert torch.equal(ctrl.group_masks()[gid], frozen) and ctrl.frozen
    assert ctrl.scheduler.current_epoch == 4


def test_steps_are_counted_and_state_round_trips():
    model, inputs, _ = build("resnet18")
    cfg = {"params": {"schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 5}}
    ctrl = hf_prune.create_pruning_controller(model, cfg, example_inputs=first(inputs))
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        for _ in range(4):
            ctrl.scheduler.step()
    state = ctrl.state_dict()
    other = hf_prune.create_pruning_controller(model, cfg, example_inputs=first(inputs))
    other.load_state_dict(state)
    assert other.scheduler.current_epoch == 2 and other.scheduler.current_step == 11
    assert all(torch.equal(a, b) for a, b in zip(ctrl.group_masks().values(), other.group_masks().values()))
    ctrl.scheduler.epoch_step()
    other.scheduler.epoch_step()
    assert ctrl.pruning_level == other.pruning_level
    assert all(torch.equal(a, b) for a, b in zip(ctrl.group_masks().values(), other.group_masks().values()))


def test_disable_scheduler_keeps_level():
    model, inputs, _ = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_steps": 4}}, example_inputs=first(inputs))
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    level, masks = ctrl.pruning_level, ctrl.group_masks()
    ctrl.disable_scheduler()
    for _ in range(5):
        ctrl.scheduler.epoch_step()
    assert ctrl.pruning_level == level and ctrl.scheduler.current_epoch == 6
    assert all(torch.equal(masks[g], m) for g, m in ctrl.group_masks().items())
    assert math.isclose(ctrl.scheduler.current_pruning_level, level)


def test_pruning_init_is_applied_at_creation():
    model, inputs, _ = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, {"pruning_init": 0.25}, example_inputs=first(inputs))
    assert ctrl.pruning_level == 0.25 and ctrl.compression_rate > 0
