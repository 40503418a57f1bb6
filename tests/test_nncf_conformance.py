"""hf_prune against NNCF 2.19 itself: schedules, rate and stage, masks, FLOPs, statistics, scopes, LeGR.

The reference values below were produced by running NNCF 2.19.0 (torch 2.15 CPU, NNCF_TORCH_LEGACY_TRACING=1)
with tests/scripts/nncf_reference.py on torchvision ResNet-18/50 built after ``torch.manual_seed(0)``, input
1x3x64x64; NNCF is never a dependency of hf_prune. Where we differ on purpose (NNCF bugs), the test says so
and docs/concepts.md explains why.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torchvision

import hf_prune
from hf_prune.algorithm.schedulers import SCHEDULERS
from hf_prune.graph.groups import nncf_scopes

SCHEDULES = {
 "exponential_0.1_0.4_s15_i1": {
  "levels": [
   0.0,
   0.1,
   0.125691778305,
   0.150650148308,
   0.17489604619,
   0.198449810479,
   0.221331199112,
   0.243559406007,
   0.265153077165,
   0.286130326309,
   0.306508750082,
   0.326305442804,
   0.345537010814,
   0.3642195864,
   0.38236884133,
   0.4,
   0.4,
   0.4,
   0.4,
   0.4
  ],
  "freeze_epoch": 16
 },
 "exponential_0_0.5_s3": {
  "levels": [
   0.0,
   0.292893218813,
   0.5,
   0.5,
   0.5,
   0.5
  ],
  "freeze_epoch": 3
 },
 "exponential_0_0.1_s1": {
  "levels": [
   0.1,
   0.1,
   0.1,
   0.1
  ],
  "freeze_epoch": 1
 },
 "exponential_0_0.5_s0": {
  "levels": [
   0.0,
   -1.0,
   -3.0,
   -7.0
  ],
  "freeze_epoch": 0
 },
 "exponential_0.5_0.3_s5": {
  "levels": [
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.238569885844,
   0.171748830366,
   0.09906373908,
   0.02,
   -0.066002159819
  ],
  "freeze_epoch": 5
 },
 "exponential_with_bias_0_0.5_s17": {
  "levels": [
   0.0,
   0.249998091989,
   0.375,
   0.437502385047,
   0.468754293107,
   0.484380604914,
   0.492193939709,
   0.496100696556,
   0.498054119704,
   0.499030853641,
   0.499519231791,
   0.499763426458,
   0.499885526586,
   0.499946578049,
   0.499977104479,
   0.499992368043,
   0.5,
   0.5,
   0.5,
   0.5
  ],
  "freeze_epoch": 17
 },
 "exponential_with_bias_0.1_0.4_s15_i1": {
  "levels": [
   0.0,
   0.1,
   0.239860520669,
   0.314527786186,
   0.354390361508,
   0.375671774458,
   0.387033271639,
   0.3930988284,
   0.396337044123,
   0.398065828716,
   0.398988774073,
   0.399481506445,
   0.399744561227,
   0.399884998151,
   0.39995997314,
   0.4,
   0.4,
   0.4,
   0.4,
   0.4
  ],
  "freeze_epoch": 16
 },
 "exponential_with_bias_0.5_0.3_s5": {
  "levels": [
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.3,
   0.3
  ],
  "freeze_epoch": 5
 },
 "exponential_with_bias_0_0.4_s1": {
  "error": "ZeroDivisionError: float division by zero"
 },
 "baseline_0.4_i2": {
  "levels": [
   0.0,
   0.0,
   0.4,
   0.4,
   0.4
  ],
  "freeze_epoch": 2
 }
}
"""case -> NNCF's level at epochs 0, 1, ... and the epoch it froze at (NNCF's PruningScheduler classes)."""

RESNET18_EPOCHS = [[0.1, 0.1, 1, False], [0.125691778305, 0.125691778305, 1, False], [0.150650148308, 0.150650148308, 1, False], [0.17489604619, 0.17489604619, 1, False], [0.198449810479, 0.198449810479, 1, False], [0.221331199112, 0.221331199112, 1, False], [0.243559406007, 0.243559406007, 1, False], [0.265153077165, 0.265153077165, 1, False], [0.286130326309, 0.286130326309, 1, False], [0.306508750082, 0.306508750082, 1, False], [0.326305442804, 0.326305442804, 1, False], [0.345537010814, 0.345537010814, 1, False], [0.3642195864, 0.3642195864, 1, False], [0.38236884133, 0.38236884133, 1, False], [0.4, 0.4, 2, False], [0.4, 0.4, 2, True], [0.4, 0.4, 2, True]]
"""ResNet-18, pruning_init 0.1, exponential to 0.4 in 15 steps: per epoch [level, compression_rate, stage, frozen]."""

RESNET18_FROZEN_SETTER_PRUNED = {"layer1.0.conv1": 8, "layer1.1.conv1": 8, "layer2.1.conv1": 24, "layer3.1.conv1": 48, "layer4.1.conv1": 96}
"""Filters pruned per layer after ``compression_rate = 0.2`` on the frozen controller above."""

MASKS = {
    "resnet18": {"digest": "82a31782c30de5f9990a66a1d844b2cfa2502ce96c6d05876c956be2a37cfcf6", "full_flops": 297115648, "current_flops": 225746944},
    "resnet50": {"digest": "2cab5297064c5b09ad462c2bb90eea2520a8770ea8df54113653f26aef0ee135", "full_flops": 671383552, "current_flops": 377316352},
}
"""Level 0.4: sha256 of ``{module name: sorted pruned filter indices}`` (JSON, sorted keys), FLOPs."""

RESNET50_PRUNED_COUNTS = {"layer1.0.conv1": 24, "layer1.0.conv2": 24, "layer1.0.conv3": 96, "layer1.0.downsample.0": 96, "layer1.1.conv1": 24, "layer1.1.conv2": 24, "layer1.1.conv3": 96, "layer1.2.conv1": 24, "layer1.2.conv2": 24, "layer1.2.conv3": 96, "layer2.0.conv1": 48, "layer2.1.conv1": 48, "layer2.1.conv2": 48, "layer2.2.conv1": 48, "layer2.2.conv2": 48, "layer2.3.conv1": 48, "layer2.3.conv2": 48, "layer3.0.conv1": 96, "layer3.1.conv1": 96, "layer3.1.conv2": 96, "layer3.2.conv1": 96, "layer3.2.conv2": 96, "layer3.3.conv1": 96, "layer3.3.conv2": 96, "layer3.4.conv1": 96, "layer3.4.conv2": 96, "layer3.5.conv1": 96, "layer3.5.conv2": 96, "layer4.0.conv1": 200, "layer4.1.conv1": 200, "layer4.1.conv2": 200, "layer4.2.conv1": 200, "layer4.2.conv2": 200}

RESNET18_STATISTICS = {
 "full_flops": 297115648,
 "current_flops": 225746944,
 "full_params_num": 11678912,
 "current_params_num": 9227456,
 "full_filters_num": 5800,
 "current_filters_num": 5408,
 "layers": {
  "layer1.0.conv1": 0.375,
  "layer1.1.conv1": 0.375,
  "layer2.1.conv1": 0.375,
  "layer3.1.conv1": 0.375,
  "layer4.1.conv1": 0.390625
 }
}
"""NNCF's ``statistics().filter_pruning.model_statistics`` at level 0.4 (layers: filter pruning level)."""

SCOPES = {
 "node": [
  "layer1.1.conv1",
  "layer2.1.conv1",
  "layer3.1.conv1",
  "layer4.1.conv1"
 ],
 "regex": [
  "layer1.0.conv1",
  "layer1.1.conv1",
  "layer3.1.conv1",
  "layer4.1.conv1"
 ],
 "regex_partial": [
  "layer1.0.conv1",
  "layer1.1.conv1",
  "layer2.1.conv1",
  "layer4.1.conv1"
 ],
 "target_regex": [
  "layer4.1.conv1"
 ]
}
"""ignored_scopes (target_scopes for target_regex) -> the layers NNCF prunes (ResNet-18)."""

GRAY_PRUNED_COUNTS = {"layer1.0.conv1": 24, "layer1.1.conv1": 24, "layer2.1.conv1": 48, "layer3.1.conv1": 96, "layer4.1.conv1": 200}
"""ResNet-18 with a one-channel first conv, level 0.4."""

LEGR_LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2", "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2", "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2"]
"""Layers NNCF prunes under learned_ranking (its defaults prune the first and downsample convs)."""


def _resnet(name: str, gray: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    if gray:
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


def _controller(name: str = "resnet18", config=None, gray: bool = False):
    x = torch.randn(1, 1 if gray else 3, 64, 64)
    return hf_prune.create_pruning_controller(_resnet(name, gray), config or {}, example_inputs=x)


def _pruned(ctrl) -> dict[str, list[int]]:
    return dict(sorted((i.module_name, [int(j) for j in torch.nonzero(~i.mask).flatten()]) for i in ctrl.pruned_modules))


def _digest(indices: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(indices, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def resnet18():
    return _controller("resnet18", {"pruning_init": 0.1, "params": {"pruning_target": 0.4, "pruning_steps": 15}})


_CASES = {  # case -> (schedule, pruning_init, params)
    "exponential_0.1_0.4_s15_i1": ("exponential", 0.1, (0.4, 1, 15)),
    "exponential_0_0.5_s3": ("exponential", 0.0, (0.5, 0, 3)),
    "exponential_0_0.1_s1": ("exponential", 0.0, (0.1, 0, 1)),
    "exponential_0.5_0.3_s5": ("exponential", 0.5, (0.3, 0, 5)),
    "exponential_with_bias_0_0.5_s17": ("exponential_with_bias", 0.0, (0.5, 0, 17)),
    "exponential_with_bias_0.1_0.4_s15_i1": ("exponential_with_bias", 0.1, (0.4, 1, 15)),
    "exponential_with_bias_0.5_0.3_s5": ("exponential_with_bias", 0.5, (0.3, 0, 5)),
    "exponential_with_bias_0_0.4_s1": ("exponential_with_bias", 0.0, (0.4, 0, 1)),
    "baseline_0.4_i2": ("baseline", 0.0, (0.4, 2, 100)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_schedules_match_nncf(case, resnet18):
    schedule, p0, (pt, init, steps) = _CASES[case]
    s = SCHEDULERS[schedule](resnet18, p0, pt, num_init_steps=init, pruning_steps=steps)
    ref = SCHEDULES[case]
    if "error" in ref:  # NNCF divides by zero for exponential_with_bias with pruning_steps 1: the target at once
        assert "ZeroDivisionError" in ref["error"]
        assert [s.level_at(e) for e in range(3)] == [pt] * 3 and s.freeze_epoch == 1
        return
    levels = [s.level_at(e) for e in range(len(ref["levels"]))]
    expected = ref["levels"]
    if p0 > pt:  # NNCF's exponential drifts below the target (and below zero) after the last step; we keep pt
        expected = [pt if e >= init + steps - 1 else v for e, v in enumerate(expected)]
    assert levels == pytest.approx(expected, abs=1e-6)
    assert s.freeze_epoch == ref["freeze_epoch"]


def test_pruning_steps_zero_is_refused_with_nncfs_behaviour():
    assert SCHEDULES["exponential_0_0.5_s0"]["freeze_epoch"] == 0  # NNCF freezes at pruning_init at once
    with pytest.raises(hf_prune.PruningConfigError, match="pruning_steps: 0 never reaches the target"):
        hf_prune.PruningConfig(pruning_steps=0)


def test_rate_stage_and_freezing_per_epoch_match_nncf(resnet18):
    """compression_rate is the level set, not the masked fraction rounding lowers: stage 2 at the target."""
    got = []
    for _ in RESNET18_EPOCHS:
        resnet18.scheduler.epoch_step()
        got.append([resnet18.scheduler.current_pruning_level, resnet18.compression_rate,
                    resnet18.compression_stage(), resnet18.frozen])
    assert [v for g in got for v in g[:2]] == pytest.approx([v for r in RESNET18_EPOCHS for v in r[:2]], abs=1e-9)
    assert [g[2:] for g in got] == [r[2:] for r in RESNET18_EPOCHS]
    masked = resnet18.statistics().filter_pruning_level
    assert masked < 0.4 and resnet18.compression_stage() == 2  # 8-multiples mask fewer; NNCF's stage still 2

    before = _pruned(resnet18)
    with pytest.warns(UserWarning, match="frozen"):
        resnet18.set_pruning_level(0.2)
    # NNCF keeps the masks but records 0.2 as its level; we keep both, so compression_rate stays true
    assert _pruned(resnet18) == before and resnet18.pruning_level == 0.4 and resnet18.frozen
    resnet18.compression_rate = 0.2  # NNCF's setter unfreezes, re-masks and freezes again
    assert resnet18.pruning_level == 0.2 and resnet18.frozen
    assert {k: len(v) for k, v in _pruned(resnet18).items()} == RESNET18_FROZEN_SETTER_PRUNED
    resnet18.scheduler.epoch_step()
    assert resnet18.pruning_level == 0.2


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_masks_and_flops_match_nncf(name):
    ctrl = _controller(name, {"params": {"pruning_target": 0.5}})
    ctrl.set_pruning_level(0.4)
    pruned = _pruned(ctrl)
    if name == "resnet50":
        assert {k: len(v) for k, v in pruned.items()} == RESNET50_PRUNED_COUNTS
    assert _digest(pruned) == MASKS[name]["digest"]
    assert ctrl.full_flops == MASKS[name]["full_flops"] and ctrl.current_flops == MASKS[name]["current_flops"]


def test_statistics_have_nncfs_structure_and_values():
    ctrl = _controller("resnet18", {"params": {"pruning_target": 0.4}})
    ctrl.set_pruning_level(0.4)
    ref = RESNET18_STATISTICS
    m = ctrl.statistics().filter_pruning.model_statistics
    assert (m.full_flops, m.current_flops) == (ref["full_flops"], ref["current_flops"])
    assert (m.full_filters_num, m.current_filters_num) == (ref["full_filters_num"], ref["current_filters_num"])
    assert m.filter_pruning_level == pytest.approx(1 - ref["current_filters_num"] / ref["full_filters_num"])
    assert {layer.name: layer.filter_pruning_level for layer in m.pruned_layers_summary} == pytest.approx(ref["layers"])
    # NNCF counts conv/linear weights only; we count every parameter the stripped model keeps
    weights = sum(mod.weight.numel() for mod in ctrl.model.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)))
    assert weights == ref["full_params_num"]
    assert m.full_params_num == sum(p.numel() for p in ctrl.model.parameters()) == ctrl.full_params_num
    assert m.current_params_num < m.full_params_num and m.params_pruning_level > 0
    assert m.flops_pruning_level == pytest.approx(1 - ref["current_flops"] / ref["full_flops"])
    text = ctrl.statistics().to_str()
    assert "5800 -> 5408" in text and "layer4.1.conv1" in text
    groups = ctrl.pruned_module_groups_info
    assert sorted(i.module_name for i in groups.get_all_nodes()) == sorted(ref["layers"])
    cluster = groups.get_all_clusters()[0]
    assert groups.get_cluster_by_id(cluster.id) is cluster and ctrl.get_mask(cluster.elements[0]).dtype == torch.bool
    assert ctrl.scheduler.num_pruning_epochs == 100 and ctrl.scheduler.num_warmup_epochs == 0
    state = ctrl.get_state()
    other = _controller("resnet18", {"params": {"pruning_target": 0.4}})
    other.load_state(state)
    assert _pruned(other) == _pruned(ctrl)


_SCOPES = {
    "node": ["ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0"],
    "regex": ["{re}.*layer2.*"],
    "regex_partial": ["{re}layer3"],
}


@pytest.mark.parametrize("case", sorted(_SCOPES) + ["target_regex"])
def test_nncf_scopes_select_the_layers_nncf_selects(case):
    key, scopes = ("target_scopes", ["{re}.*layer4.*"]) if case == "target_regex" else ("ignored_scopes", _SCOPES[case])
    ctrl = _controller("resnet18", {key: scopes})
    assert sorted(i.module_name for i in ctrl.pruned_modules) == SCOPES[case]


@pytest.mark.parametrize("scope", ["ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]",
                                   "ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]", "layer1.0.conv1"])
def test_layer_scopes_and_module_names_select_the_same_layer(scope):
    """NNCF matches only graph node names (``.../conv2d_0``) and rejects the layer's own scope; we accept both."""
    ctrl = _controller("resnet18", {"ignored_scopes": [scope]})
    assert sorted(i.module_name for i in ctrl.pruned_modules) == SCOPES["node"]


def test_unmatched_scope_names_the_closest_unless_validate_scopes_is_false():
    with pytest.raises(hf_prune.ScopeError, match=r"did you mean: .*ResNet/Sequential\[layer1\]/BasicBlock\[0\]/Conv2d\[conv1\]"):
        _controller("resnet18", {"ignored_scopes": ["ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv9]"]})
    ctrl = _controller("resnet18", {"ignored_scopes": ["ResNet/Conv2d[nothing]"], "validate_scopes": False})
    assert len(ctrl.pruned_modules) == 5


def test_grayscale_first_conv_is_not_pruned():
    ctrl = _controller("resnet18", {"params": {"pruning_target": 0.4}}, gray=True)
    ctrl.set_pruning_level(0.4)
    assert {k: len(v) for k, v in _pruned(ctrl).items()} == GRAY_PRUNED_COUNTS
    ctrl = _controller("resnet18", {"params": {"prune_downsample_convs": True}}, gray=True)
    assert "conv1" not in {i.module_name for i in ctrl.pruned_modules}
    assert any("first convolution conv1" in r for r in ctrl.analysis.unprunable_layers["conv1"])


def test_learned_ranking_defaults_and_nncf_coefficient_files(tmp_path):
    base = {"params": {"interlayer_ranking_type": "learned_ranking", "pruning_target": 0.5}}
    cfg = hf_prune.PruningConfig.from_dict(base)
    p = cfg.params
    assert p.prune_first_conv and p.prune_downsample_convs and p.all_weights and p.legr_params.max_pruning == 0.5
    with pytest.raises(hf_prune.PruningConfigError, match="all_weights"):
        hf_prune.PruningConfig.from_dict({"params": {**base["params"], "all_weights": False}})
    names = nncf_scopes(_resnet("resnet18"))
    coeffs = {names[m][-1]: [2.0, 0.5] for m in LEGR_LAYERS}  # NNCF's save_ranking_coeffs_path format
    path = tmp_path / "coeffs.json"
    path.write_text(json.dumps(coeffs))
    ctrl = _controller("resnet18", {"params": {**base["params"], "load_ranking_coeffs_path": str(path)}})
    assert sorted(i.module_name for i in ctrl.pruned_modules) == LEGR_LAYERS
    assert set(ctrl.ranking.coefficients.values()) == {(2.0, 0.5)}
    del coeffs[names["conv1"][-1]]
    path.write_text(json.dumps(coeffs))
    with pytest.raises(hf_prune.HfPruneError, match=r"no coefficients for pruned layer\(s\) \['conv1'\]"):
        _controller("resnet18", {"params": {**base["params"], "load_ranking_coeffs_path": str(path)}})


class _Upsampler(torch.nn.Module):
    """The transposed-convolution part of NNCF's BigPruningTestModel: conv -> ConvTranspose2d -> conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.up = torch.nn.ConvTranspose2d(32, 24, 2, stride=2)
        self.bn3 = torch.nn.BatchNorm2d(24)
        self.conv3 = torch.nn.Conv2d(24, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.up(x)))
        return self.fc(self.conv3(x).mean((2, 3)))


def test_conv_feeding_a_transposed_conv_and_its_filters_strip_exactly():
    from conftest import randomize_norms

    model = randomize_norms(_Upsampler().eval())
    x = torch.randn(2, 3, 8, 8)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"channel_multiple": 1}}, example_inputs=x[:1])
    assert {tuple(g.producers): tuple(g.consumers) for g in ctrl.groups.values()} == {
        ("conv2",): ("up",), ("up",): ("conv3",), ("conv3",): ("fc",)}
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = model(x)
    small = ctrl.strip_model(model, do_copy=True)
    assert (small.up.in_channels, small.up.out_channels, tuple(small.up.weight.shape[:2])) == (16, 12, (16, 12))
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked, rtol=1e-5, atol=1e-6)
    assert hf_prune.analyze_model(small, x[:1], verify=False).dense_flops == ctrl.current_flops


def test_linear_followed_by_layernorm_is_masked_over_kept_channels():
    """NNCF zeroes the pruned outputs of a Linear that a LayerNorm normalizes over; the zeros still count in
    the LayerNorm's mean and variance, so no smaller model computes what NNCF's masked model computes. Our
    masked LayerNorm takes its statistics over the kept channels: it computes what the strip does."""
    torch.manual_seed(0)
    linear, norm = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16)
    keep = torch.arange(16) % 4 != 0
    x = torch.randn(4, 8)
    with torch.no_grad():
        nncf_masked = norm(linear(x) * keep)[:, keep]  # NNCF: pruned filters zeroed, shapes kept
        small_linear = torch.nn.Linear(8, 12)
        small_linear.weight.copy_(linear.weight[keep])
        small_linear.bias.copy_(linear.bias[keep])
        small_norm = torch.nn.LayerNorm(12)
        stripped = small_norm(small_linear(x))
    assert (nncf_masked - stripped).abs().max() > 0.05
    model = torch.nn.Sequential(linear, norm, torch.nn.Linear(16, 4)).eval()
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"channel_multiple": 1}}, example_inputs=x[:1])
    ctrl.set_pruning_level(0.25)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ctrl.strip_model(model, do_copy=True)(x))
