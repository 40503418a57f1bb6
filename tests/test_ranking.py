"""LeGR learned ranking: coefficients change the plan, the search optimizes, files round-trip."""

from __future__ import annotations

import json

import pytest
import torch

import hf_prune
from hf_prune.algorithm.ranking import RankingCoefficients, RankingCoefficientsError
from models import build, first

LEGR = {"generations": 12, "train_steps": 1, "population_size": 8, "num_samples": 4, "mutate_percent": 0.5}


def _ctrl(model=None, **params):
    built, inputs, _ = build("resnet18")
    model = model if model is not None else built
    cfg = {"params": {"interlayer_ranking_type": "learned_ranking", "pruning_target": 0.5, "legr_params": LEGR, **params}}
    return model, hf_prune.create_pruning_controller(model, cfg, example_inputs=first(inputs))


def _favour_first_group(ctrl):
    """A reward that prefers keeping the first group's channels: the search must learn that."""
    gid = min(ctrl.groups)
    return lambda model: float(ctrl.group_masks()[gid].float().mean())


def test_search_improves_reward_and_is_reproducible(tmp_path):
    model, ctrl = _ctrl(save_ranking_coeffs_path=str(tmp_path / "coeffs.json"))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    reward = _favour_first_group(ctrl)
    steps = []
    train = lambda m, n: steps.append(n)  # noqa: E731 - the search must call it with train_steps
    ctrl.set_pruning_level(0.5)
    baseline = reward(model)
    best = ctrl.learn_ranking(train, reward, show_progress=False)
    assert steps and set(steps) == {LEGR["train_steps"]}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # weights restored
    ctrl.set_pruning_level(0.5)
    assert reward(model) > baseline
    assert (tmp_path / "coeffs.json").is_file()
    _, again = _ctrl(model)
    assert again.learn_ranking(lambda m, n: None, _favour_first_group(again), show_progress=False).coefficients == best.coefficients


def test_saved_coefficients_reload_to_the_same_masks(tmp_path):
    path = tmp_path / "c.json"
    model, ctrl = _ctrl(save_ranking_coeffs_path=str(path))
    ctrl.learn_ranking(lambda m, n: None, _favour_first_group(ctrl), show_progress=False)
    ctrl.set_pruning_level(0.5)
    masks = ctrl.group_masks()
    _, loaded = _ctrl(model, load_ranking_coeffs_path=str(path))
    loaded.set_pruning_level(0.5)
    assert all(torch.equal(masks[g], m) for g, m in loaded.group_masks().items())
    state = ctrl.state_dict()
    _, resumed = _ctrl(model)
    resumed.load_state_dict(state)
    assert resumed.ranking.coefficients == ctrl.ranking.coefficients


def test_learned_ranking_with_flops_target():
    model, ctrl = _ctrl(pruning_target=None, pruning_flops_target=0.4)
    ctrl.set_ranking_coefficients(RankingCoefficients(
        {g: (1.0 if g % 2 else 5.0, 0.0) for g in ctrl.groups}, {g: s.size for g, s in ctrl.groups.items()}))
    ctrl.set_pruning_level(0.4)
    assert 0.4 <= ctrl.compression_rate <= 0.42
    levels = ctrl.current_groupwise_pruning_level
    assert max(levels.values()) <= LEGR.get("max_pruning", 0.8) + 1e-9


def test_bad_coefficient_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RankingCoefficientsError, match="bad.json.*malformed"):
        _ctrl(load_ranking_coeffs_path=str(bad))
    other = tmp_path / "other.json"
    model, inputs, _ = build("test_vit")
    vit = hf_prune.create_pruning_controller(model, {"params": {"interlayer_ranking_type": "learned_ranking"}},
                                             example_inputs=first(inputs))
    vit.ranking.save(other)
    with pytest.raises(RankingCoefficientsError, match="other.json.*different model"):
        _ctrl(load_ranking_coeffs_path=str(other))
    data = json.loads(other.read_text())
    data["format_version"] = 99
    other.write_text(json.dumps(data))
    with pytest.raises(RankingCoefficientsError, match="format_version 99"):
        _ctrl(load_ranking_coeffs_path=str(other))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        _ctrl(load_ranking_coeffs_path=str(tmp_path / "missing.json"))
