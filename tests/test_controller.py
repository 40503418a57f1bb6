"""The controller's NNCF surface: levels, rates, FLOPs targets, importance, loss, statistics, export."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.data import DataLoader

import hf_prune
from hf_prune.algorithm.controller import MAX_GLOBAL_GROUP_LEVEL
from hf_prune.app.data import load_digits
from conftest import randomize_norms
from models import build, first


def _ctrl(name="resnet18", **params):
    model, inputs, logits = build(name)
    randomize_norms(model)
    ctrl = hf_prune.create_pruning_controller(model, {"params": params}, example_inputs=first(inputs))
    return model, inputs, logits, ctrl


def test_levels_and_rates_in_filter_mode():
    model, inputs, logits, ctrl = _ctrl(pruning_target=0.5)
    assert ctrl.maximal_compression_rate == 1.0
    ctrl.set_pruning_level(0.5)
    assert ctrl.pruning_level == 0.5
    levels = ctrl.current_groupwise_pruning_level
    assert set(levels) == set(ctrl.groups) and all(0.49 <= v <= 0.5 for v in levels.values())
    assert ctrl.compression_rate == pytest.approx(0.5, abs=0.01) and ctrl.compression_stage() == 2
    ctrl.compression_rate = 0.25  # the setter sets the level
    assert ctrl.pruning_level == 0.25 and ctrl.compression_stage() == 1
    gid = next(iter(ctrl.groups))
    ctrl.set_pruning_level({gid: 0.75})
    assert ctrl.current_groupwise_pruning_level[gid] == pytest.approx(0.75, abs=0.13)


def test_get_mask_is_static_and_live():
    model, inputs, logits, ctrl = _ctrl()
    info = ctrl.pruned_modules[0]
    assert hf_prune.FilterPruningController.get_mask(info).all()
    ctrl.set_pruning_level(0.5)
    mask = hf_prune.FilterPruningController.get_mask(info)
    assert mask.dtype == torch.bool and mask.numel() == model.get_submodule(info.module_name).weight.shape[info.dim]
    assert 0 < int(mask.sum()) < mask.numel()


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2_100"])
@pytest.mark.parametrize("all_weights", [False, True])
def test_flops_target_is_met(name, all_weights):
    model = timm.create_model(name)
    x = torch.randn(1, 3, 128, 128)
    cfg = {"params": {"pruning_flops_target": 0.5, "all_weights": all_weights}}
    ctrl = hf_prune.create_pruning_controller(model, cfg, example_inputs=x)
    assert 0.5 < ctrl.maximal_compression_rate < 1
    ctrl.set_pruning_level(0.5)
    assert 0.5 <= ctrl.compression_rate <= 0.52
    assert ctrl.compression_stage() == 2
    stripped = ctrl.strip_model(model, do_copy=True)
    achieved = 1 - hf_prune.analyze_model(stripped, x, verify=False).dense_flops / ctrl.analysis.dense_flops
    assert 0.5 <= achieved <= 0.52
    with pytest.raises(hf_prune.PruningLevelError, match="unreachable"):
        ctrl.set_pruning_level(0.99)


def test_all_weights_ranks_globally_without_emptying_groups():
    model, inputs, logits, ctrl = _ctrl("resnet50", all_weights=True)
    weak = next(g for g in ctrl.groups.values() if len(g.producers) == 1)
    info = next(i for i in ctrl.pruned_modules if i.group_id == weak.id)
    with torch.no_grad():  # most filters of one group become unimportant
        model.get_submodule(info.module_name).weight[: int(0.95 * weak.size)] *= 1e-3
    ctrl.set_pruning_level(0.6)
    levels = ctrl.current_groupwise_pruning_level
    assert levels[weak.id] == pytest.approx(MAX_GLOBAL_GROUP_LEVEL, abs=0.13)  # capped, never emptied
    assert min(levels.values()) < 0.6
    assert all(m.any() for m in ctrl.group_masks().values())
    assert ctrl.compression_rate == pytest.approx(0.6, abs=0.08)


def test_importance_criteria_differ():
    masks = {}
    for criterion in ("L1", "L2", "geometric_median"):
        model, inputs, logits, ctrl = _ctrl("resnet18", filter_importance=criterion)
        ctrl.set_pruning_level(0.5)
        masks[criterion] = torch.cat(list(ctrl.group_masks().values()))
    assert not torch.equal(masks["L1"], masks["geometric_median"])
    assert not torch.equal(masks["L2"], masks["geometric_median"])
    with pytest.raises(hf_prune.PruningConfigError, match="geometric_median"):  # the allowed criteria are named
        _ctrl("resnet18", filter_importance="L3")


def test_loss_is_zero_by_default_and_regularizes_masked_filters():
    model, inputs, logits, ctrl = _ctrl()
    ctrl.set_pruning_level(0.5)
    assert ctrl.loss().item() == 0.0
    model, inputs, logits, ctrl = _ctrl(regularization_weight=1e-3)
    assert ctrl.loss().item() == 0.0  # nothing masked yet
    ctrl.set_pruning_level(0.5)
    loss = ctrl.loss()
    assert loss > 0 and loss.requires_grad
    loss.backward()
    info = ctrl.pruned_modules[0]
    grad = model.get_submodule(info.module_name).weight.grad.movedim(info.dim, 0)
    assert torch.count_nonzero(grad[info.mask]) == 0 and torch.count_nonzero(grad[~info.mask]) > 0


def test_loss_follows_every_mask_change():
    """The loss's cached terms and ``levels_nonzero`` are refreshed by each way the masks change: a level,
    a level back to 0, and a loaded pruning state."""
    model, inputs, logits, ctrl = _ctrl(regularization_weight=1e-3)
    ctrl.set_pruning_level(0.5)
    pruned_state, pruned_loss = ctrl.state_dict(), ctrl.loss().item()
    assert ctrl.levels_nonzero and pruned_loss > 0
    ctrl.set_pruning_level(0.0)
    assert not ctrl.levels_nonzero and ctrl.loss().item() == 0.0
    ctrl.load_state_dict(pruned_state)
    assert ctrl.levels_nonzero and ctrl.loss().item() == pytest.approx(pruned_loss)
    ctrl.set_pruning_level(0.25)
    assert 0 < ctrl.loss().item() < pruned_loss


def test_statistics_dict_and_table():
    model, inputs, logits, ctrl = _ctrl(pruning_target=0.5)
    ctrl.set_pruning_level(0.5)
    stats = ctrl.statistics()
    d = stats.to_dict()
    assert d["current_level"] == 0.5 and d["target_level"] == 0.5
    assert d["flops_after"] < d["flops_before"] and d["params_after"] < d["params_before"]
    assert d["filters_after"] < d["filters_before"]
    layer = d["layers"][0]
    assert set(layer) >= {"name", "weight_shape", "mask_shape", "kept", "total", "level"}
    text = str(stats)
    assert "layer1.0.conv1" in text and "FLOPs" in text and "kept / total" in text
    quick = ctrl.statistics(quickly_collected_only=True).to_dict()
    assert quick["flops_after"] is None and quick["filters_after"] == d["filters_after"]


def test_prepare_for_export_and_zeros_format_keep_outputs():
    model, inputs, logits, ctrl = _ctrl("mobilenetv2_100")
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = logits(model, inputs)
    zeros = ctrl.strip_model(model, do_copy=True, strip_format="zeros")
    assert [p.shape for p in zeros.parameters()] == [p.shape for p in model.parameters()]
    info = ctrl.pruned_modules[0]
    w = zeros.get_submodule(info.module_name).weight.movedim(info.dim, 0)
    assert torch.count_nonzero(w[~info.mask]) == 0 and torch.count_nonzero(w[info.mask]) > 0
    with torch.no_grad():
        torch.testing.assert_close(logits(zeros, inputs), masked, rtol=1e-4, atol=1e-4)
    ctrl.prepare_for_export()
    w = model.get_submodule(info.module_name).weight.movedim(info.dim, 0)
    assert torch.count_nonzero(w[~info.mask]) == 0
    with torch.no_grad():
        torch.testing.assert_close(logits(model, inputs), masked, rtol=1e-4, atol=1e-4)


def _accuracy(model, dataset):
    model.eval()
    with torch.no_grad():
        x = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
        return float((model(x).argmax(-1) == dataset.labels).float().mean())


def test_batchnorm_adaptation_improves_pruned_accuracy():
    torch.manual_seed(0)
    data = load_digits(image_size=16)
    model = timm.create_model("test_resnet", num_classes=10)
    loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert _accuracy(model, data.test) > 0.85
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(hf_prune.HfPruneError, match="data_loader"):
        hf_prune.create_pruning_controller(model, None, example_inputs=x).set_pruning_level(
            0.5, run_batchnorm_adaptation=True)
    cfg = {"params": {"channel_multiple": 1}, "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}}}
    ctrl = hf_prune.create_pruning_controller(model, cfg, example_inputs=x, data_loader=loader)
    ctrl.set_pruning_level(0.6)
    pruned = _accuracy(model, data.test)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_var.clone() for m in norms]
    ctrl.set_pruning_level(0.6, run_batchnorm_adaptation=True)
    adapted = _accuracy(model, data.test)
    assert all(not torch.equal(b, m.running_var) for b, m in zip(before, norms))
    assert adapted > pruned + 0.05, (pruned, adapted)


def test_trainer_keeps_the_best_checkpoint_when_rounding_undercuts_the_target(tmp_path):
    """Kept channels rounded to multiples of 8 mask 25% of test_resnet's filters at level 0.3: the stage is
    still 2 (NNCF's rate is the level set), so evaluations count and load_best_model_at_end finds a best one."""
    from scripts.common import digits, training_args

    data = digits(limit=128)
    model = timm.create_model("test_resnet", num_classes=10)
    scores = iter([0.9, 0.5, 0.7])  # the unpruned epoch 0 scores best, epoch 2 best among the pruned
    cfg = {"params": {"pruning_target": 0.3, "pruning_steps": 2}}
    args = training_args(tmp_path, num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch",
                         load_best_model_at_end=True, metric_for_best_model="score")
    trainer = hf_prune.PruningTrainer(model, args, pruning_config=cfg, train_dataset=data.train,
                                      eval_dataset=data.test, compute_metrics=lambda _: {"score": next(scores)})
    trainer.train()
    ctrl = trainer.controller
    layers = ctrl.statistics().layers
    assert sum(layer.kept for layer in layers) / sum(layer.total for layer in layers) > 0.7  # masked < 30%
    assert ctrl.compression_stage() == 2
    evals = [h["eval_score"] for h in trainer.state.log_history if "eval_score" in h]
    assert evals == [0.9, 0.5, 0.7]  # as logged; only stage-2 evaluations may make a checkpoint the best
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-12")
