"""Bad input gets a clear error naming what was wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hf_prune
from models import build, first


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.tail = nn.Sequential(nn.Identity(), _Concat())

    def forward(self, x):
        return self.tail(self.stem(x))


class _Concat(nn.Module):
    def forward(self, x):
        return torch.cat([x, x[:, :, :1]], dim=1)  # mismatched spatial sizes


def test_untraceable_model_names_module_and_op():
    with pytest.raises(hf_prune.AnalysisError) as e:
        hf_prune.create_pruning_controller(_Broken(), None, example_inputs=torch.randn(1, 3, 16, 16))
    msg = str(e.value)
    assert "tail.1" in msg and "aten.cat" in msg and "(1, 3, 16, 16)" in msg


def test_wrong_input_shape_is_a_clear_error():
    model, _, _ = build("resnet18")
    with pytest.raises(hf_prune.AnalysisError) as e:
        hf_prune.create_pruning_controller(model, None, example_inputs=torch.randn(1, 1, 64, 64))
    msg = str(e.value)
    assert "(1, 1, 64, 64)" in msg and "conv1" in msg and "aten.convolution" in msg


def test_no_example_inputs_and_none_inferable():
    with pytest.raises(hf_prune.AnalysisError, match="example_inputs"):
        hf_prune.create_pruning_controller(nn.Sequential(nn.Linear(4, 4)), None)


def test_nothing_prunable_is_an_error_unless_allowed():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(hf_prune.NothingPrunableError, match="nothing prunable.*reaches the model output"):
        hf_prune.create_pruning_controller(model, None, example_inputs=x)
    with pytest.warns(UserWarning, match="nothing prunable.*reaches the model output"):
        ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=x, allow_nothing_prunable=True)
    ctrl.set_pruning_level(0.5)
    assert ctrl.compression_rate == 0 and ctrl.compression_stage() == 0
    assert torch.equal(ctrl.strip_model(model, do_copy=True)(x), model(x))


def test_unknown_scope_lists_closest_names():
    model, inputs, _ = build("resnet18")
    with pytest.raises(hf_prune.ScopeError) as e:
        hf_prune.create_pruning_controller(model, {"ignored_scopes": ["layer1.0.conv9"]}, example_inputs=first(inputs))
    assert "ignored_scopes" in str(e.value) and "layer1.0.conv1" in str(e.value)
    with pytest.raises(hf_prune.ScopeError, match="target_scopes.*layer4"):
        hf_prune.create_pruning_controller(model, {"target_scopes": ["layer44"]}, example_inputs=first(inputs))
    with pytest.raises(hf_prune.ScopeError, match="regex"):
        hf_prune.create_pruning_controller(model, {"ignored_scopes": ["{re}nothing.*"]}, example_inputs=first(inputs))


def test_scopes_exclude_and_select_groups():
    model, inputs, _ = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, {"ignored_scopes": ["layer1"]}, example_inputs=first(inputs))
    assert ctrl.groups and all(not p.startswith("layer1.") for g in ctrl.groups.values() for p in g.producers)
    excluded = [g for g in ctrl.analysis.groups if any(p.startswith("layer1.") for p in g.producers)]
    assert excluded and all(any("ignored_scopes" in r for r in g.reasons) for g in excluded)
    ctrl = hf_prune.create_pruning_controller(model, {"target_scopes": ["{re}layer[34]\\..*"]}, example_inputs=first(inputs))
    assert ctrl.groups and all(p.startswith(("layer3.", "layer4.")) for g in ctrl.groups.values() for p in g.producers)


@pytest.mark.parametrize("level", [1.0, -0.1, 1.5, "0.5", True])
def test_level_out_of_range(level):
    model, inputs, _ = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    with pytest.raises(hf_prune.PruningLevelError, match=r"\[0, 1\)"):
        ctrl.set_pruning_level(level)


def test_unknown_group_ids():
    model, inputs, _ = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    with pytest.raises(hf_prune.PruningLevelError, match="unknown pruning group id.*999.*prunable group ids are"):
        ctrl.set_pruning_level({999: 0.5})
    with pytest.raises(hf_prune.PruningLevelError, match=r"pruning_level\[\d+\]"):
        ctrl.set_pruning_level({next(iter(ctrl.groups)): 2.0})


def test_strip_before_pruning_returns_unchanged_copy():
    model, inputs, logits = build("resnet18")
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    copy = ctrl.strip_model(model, do_copy=True)
    assert copy is not model
    assert [p.shape for p in copy.parameters()] == [p.shape for p in model.parameters()]
    with torch.no_grad():
        assert torch.equal(logits(copy, inputs), logits(model, inputs))


def test_bad_config_and_strip_format():
    model, inputs, _ = build("resnet18")
    with pytest.raises(TypeError, match="PruningConfig or a dict"):
        hf_prune.create_pruning_controller(model, 0.5, example_inputs=first(inputs))
    with pytest.raises(hf_prune.PruningConfigError, match="pruning_taget"):
        hf_prune.create_pruning_controller(model, {"params": {"pruning_taget": 0.5}}, example_inputs=first(inputs))
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    with pytest.raises(ValueError, match="strip_format"):
        ctrl.strip_model(model, strip_format="onnx")


def test_one_except_catches_every_missing_file_and_input(tmp_path):
    """``except HfPruneError`` (the CLI's only handler) catches each; the message names what is missing."""
    from hf_prune.app.cli import main

    model, inputs, _ = build("resnet18")
    learned = {"params": {"interlayer_ranking_type": "learned_ranking",
                          "load_ranking_coeffs_path": str(tmp_path / "coeffs.json")}}
    ctrl = hf_prune.create_pruning_controller(model, None, example_inputs=first(inputs))
    cases = [
        (lambda: hf_prune.PruningConfig.from_file(tmp_path / "absent.yaml"), "absent.yaml"),
        (lambda: hf_prune.PruningConfig.from_pretrained(tmp_path), "pruning_config.json"),
        (lambda: hf_prune.create_pruning_controller(model, learned, example_inputs=first(inputs)), "coeffs.json"),
        (lambda: ctrl.set_pruning_level(0.3, run_batchnorm_adaptation=True), "data_loader="),
    ]
    for call, missing in cases:
        with pytest.raises(hf_prune.HfPruneError, match=missing):
            call()
    assert main(["analyze", "timm/test_resnet", "--config", str(tmp_path / "absent.yaml")]) == 2
