"""PruningTrainer and PruningCallback in real ``transformers.Trainer`` runs on the embedded digits."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification, Trainer, TrainerCallback,
    default_data_collator, set_seed,
)

from hf_prune import AnalysisError, HfPruneError
from hf_prune.app.data import load_digits
from hf_prune.errors import PruningStateError
from hf_prune.integrations.pruning_state import STATE_NAME, load_pruning_controller
from hf_prune.integrations.trainer import PruningCallback, PruningTrainer, trainer_model
from scripts.common import (  # noqa: F401  (single_thread is a fixture)
    PRUNING, StopAfterEpoch, digits, masks_of, same_tensors, single_thread, tiny_resnet, training_args,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data():
    return digits()


def _trainer(output_dir: Path, data, config=PRUNING, model: nn.Module | None = None, **args) -> PruningTrainer:
    kwargs = {key: args.pop(key) for key in ("callbacks", "compute_metrics") if key in args}
    return PruningTrainer(model or tiny_resnet(), training_args(output_dir, **args), pruning_config=config,
                          train_dataset=data.train, eval_dataset=data.test, **kwargs)


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def test_prunes_on_schedule_logs_and_checkpoints(tmp_path, data):
    trainer = _trainer(tmp_path, data, save_strategy="epoch")
    trainer.train()
    ctrl = trainer.controller
    assert ctrl.model is trainer.model and ctrl.frozen and ctrl.scheduler.current_epoch == 2
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["pruning/level"] for h in logs] == [0.0, 0.5, 0.5]
    assert [h["pruning/compression_stage"] for h in logs] == [0, 2, 2]
    assert logs[0]["pruning/flops_reduction"] == 0 < logs[-1]["pruning/flops_reduction"]
    states = [torch.load(tmp_path / f"checkpoint-{step}" / STATE_NAME, weights_only=True) for step in (8, 16, 24)]
    assert [s["controller"]["scheduler"]["current_epoch"] for s in states] == [0, 1, 2]
    assert same_tensors(states[-1]["controller"]["masks"], masks_of(ctrl))
    # the checkpoint also reloads through the persistence API
    reloaded = load_pruning_controller(tiny_resnet(seed=1), tmp_path / "checkpoint-24")
    assert same_tensors(masks_of(reloaded), masks_of(ctrl))


def test_controller_loss_is_added_in_training_only(tmp_path, data):
    config = {"pruning_init": 0.5, "params": {**PRUNING["params"], "regularization_weight": 0.1}}
    trainer = _trainer(tmp_path, data, config=config)
    model, batch = trainer.model, default_data_collator([data.train[i] for i in range(8)])
    extra = trainer.controller.loss()
    assert extra > 0
    model.train()
    assert trainer.compute_loss(model, batch).item() == pytest.approx((model(**batch).loss + extra).item())
    model.eval()
    assert trainer.compute_loss(model, batch).item() == pytest.approx(model(**batch).loss.item())


def _own_trainer(output_dir: Path, data, callbacks=None, **args) -> Trainer:
    """A plain Trainer with a PruningCallback installed (what users with their own Trainer do)."""
    trainer = Trainer(tiny_resnet(), training_args(output_dir, **args), train_dataset=data.train, callbacks=callbacks)
    PruningCallback(PRUNING).install(trainer)
    return trainer


def _callback_trainer(output_dir: Path, data, callbacks=None, **args) -> Trainer:
    """A plain Trainer given a PruningCallback the normal way, ``callbacks=[...]``."""
    return Trainer(tiny_resnet(), training_args(output_dir, **args), train_dataset=data.train,
                   callbacks=[*(callbacks or []), PruningCallback(PRUNING)])


def _controller(trainer: Trainer):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PruningCallback)).controller


@pytest.mark.parametrize("make, save, stop_after", [
    (_trainer, {"save_strategy": "epoch"}, 1),
    (_trainer, {"save_strategy": "steps", "save_steps": 12}, 2),
    (_own_trainer, {"save_strategy": "epoch"}, 1),
    (_callback_trainer, {"save_strategy": "steps", "save_steps": 12}, 2),
], ids=["epoch-boundary", "mid-epoch", "own-trainer", "callbacks-argument"])
def test_resume_continues_bit_identically(tmp_path, data, make, save, stop_after):
    full = make(tmp_path / "full", data, **save)
    full.train()
    make(tmp_path / "stopped", data, callbacks=[StopAfterEpoch(stop_after)], **save).train()
    checkpoint = max((tmp_path / "stopped").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resumed = make(tmp_path / "resumed", data, **save)  # another output_dir: the given checkpoint is used
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert same_tensors(masks_of(_controller(resumed)), masks_of(_controller(full)))
    assert _controller(resumed).scheduler.state_dict() == _controller(full).scheduler.state_dict()
    assert same_tensors(resumed.model.state_dict(), full.model.state_dict())


def test_only_fully_compressed_checkpoints_can_be_best(tmp_path, data):
    scores = iter([1.0, 0.5, 0.2])  # the unpruned first epoch scores best
    trainer = _trainer(tmp_path, data, compute_metrics=lambda _: {"score": next(scores)}, eval_strategy="epoch",
                       save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="score")
    trainer.train()
    best = tmp_path / "checkpoint-16"
    assert trainer.state.best_model_checkpoint == str(best)
    assert [h["eval_score"] for h in trainer.state.log_history if "eval_score" in h] == [1.0, 0.5, 0.2]
    saved = torch.load(best / STATE_NAME, weights_only=True)["controller"]
    assert same_tensors(masks_of(trainer.controller), saved["masks"])
    assert trainer.controller.scheduler.current_epoch == 1
    assert same_tensors(trainer.model.state_dict(), load_file(best / "model.safetensors"))


def test_callback_in_a_users_own_trainer(tmp_path, data):
    class OwnTrainer(Trainer):
        """A user's Trainer subclass."""

    config = {"params": {"schedule": "baseline", "pruning_target": 0.5, "channel_multiple": 4,
                         "regularization_weight": 0.5}}
    class Reporter(TrainerCallback):
        """Stands for TensorBoard & co: records what it is given to log."""

        logged: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logged.append(dict(logs))

    model = tiny_resnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = PruningCallback(config)  # given the normal way, after a reporter: it still runs before it
    trainer = OwnTrainer(model, training_args(tmp_path, optim="sgd", num_train_epochs=2), train_dataset=data.train,
                         callbacks=[Reporter(), callback])
    trainer.train()
    ctrl = callback.controller
    assert ctrl.model is model and ctrl.frozen and ctrl.compression_stage() == 2
    assert all(h["pruning/level"] == 0.5 for h in trainer.state.log_history)
    assert all(logs["pruning/compression_stage"] == 2 for logs in Reporter.logged)
    for info in ctrl.pruned_modules:  # masked filters get no task gradient, only the controller loss's
        pruned = ~info.mask
        old = before[info.param].movedim(info.dim, 0)[pruned].flatten(1).norm(dim=1)
        new = model.get_parameter(info.param).detach().movedim(info.dim, 0)[pruned].flatten(1).norm(dim=1)
        assert (new < old).all(), info.module_name


def test_callback_and_pruning_trainer_train_identically(tmp_path, data):
    """The controller's loss goes through the same gradient clipping and accumulation in both paths."""
    config = {"pruning_init": 0.25, "params": {**PRUNING["params"], "regularization_weight": 0.5}}
    args = dict(num_train_epochs=1, max_grad_norm=0.5, gradient_accumulation_steps=2)
    pruning_trainer = _trainer(tmp_path / "a", data, config=config, **args)
    pruning_trainer.train()
    trainer = Trainer(tiny_resnet(), training_args(tmp_path / "b", **args), train_dataset=data.train,
                      callbacks=[PruningCallback(config)])
    trainer.train()
    assert max(h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h) > 0.5  # clipping happened
    assert same_tensors(trainer.model.state_dict(), pruning_trainer.model.state_dict())


def test_strip_model_returns_the_smaller_model_and_ends_training(tmp_path, data):
    trainer = _trainer(tmp_path, data, num_train_epochs=2)
    trainer.train()
    loss = trainer.evaluate()["eval_loss"]
    params = sum(p.numel() for p in trainer.model.parameters())
    small = trainer.strip_model()
    assert small is trainer.model and sum(p.numel() for p in small.parameters()) < params
    assert trainer.evaluate()["eval_loss"] == pytest.approx(loss, rel=1e-5)
    trainer.save_model(tmp_path / "small")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "small").eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(reloaded(pixel_values=x).logits, small.eval()(pixel_values=x).logits)
    with pytest.raises(HfPruneError, match="stripped"):
        trainer.train()


def test_stripping_while_training_stops_it(tmp_path, data):
    class StripAtEpochEnd(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch == 2:  # a user's mistake: shapes change under the optimizer
                trainer.controller.strip_model()

    trainer = _trainer(tmp_path, data, callbacks=[StripAtEpochEnd()])
    with pytest.raises(HfPruneError, match=r"stripped \(.*weight: \(\d+, "):
        trainer.train()
    assert trainer.state.global_step == 16  # not one step on the changed model


def test_restoring_callbacks_from_the_checkpoint_is_refused(tmp_path, data):
    # the Trainer would replace the callback by a new one, without its controller
    with pytest.raises(HfPruneError, match="restore_callback_states_from_checkpoint=True would replace"):
        _trainer(tmp_path, data, restore_callback_states_from_checkpoint=True)
    with pytest.raises(HfPruneError, match="restore_callback_states_from_checkpoint=True would replace"):
        _callback_trainer(tmp_path, data, restore_callback_states_from_checkpoint=True)


def test_pruning_config_of_the_wrong_type(tmp_path, data):
    with pytest.raises(TypeError, match="pruning_config must be a hf_prune.PruningConfig"):
        _trainer(tmp_path, data, config=0.5)


def test_model_the_controller_cannot_analyse(tmp_path, data):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, pixel_values, labels=None):
            x = self.conv(pixel_values)
            return torch.cat([x, x[:, :, :1]], dim=1)  # mismatched spatial sizes

    with pytest.raises(AnalysisError, match="aten.cat"):
        _trainer(tmp_path, data, model=Untraceable())
    assert not any(tmp_path.iterdir())


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_resume_from_a_foreign_checkpoint_is_refused_and_overwrites_nothing(tmp_path, data):
    _trainer(tmp_path, data, save_strategy="epoch", num_train_epochs=1).train()
    checkpoint, stateless, overwritten = tmp_path / "checkpoint-8", tmp_path / "stateless", tmp_path / "overwritten"
    shutil.copytree(checkpoint, stateless)  # as a Trainer without pruning writes it
    trainer_state = json.loads((stateless / "trainer_state.json").read_text())
    trainer_state["stateful_callbacks"].pop("PruningCallback")
    (stateless / "trainer_state.json").write_text(json.dumps(trainer_state))
    shutil.copytree(checkpoint, overwritten)  # its weights replaced by another run's
    Trainer(tiny_resnet(seed=1), training_args(tmp_path / "other")).save_model(overwritten)
    before = _snapshot(tmp_path)
    other_model = ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10))
    other_config = {"params": {**PRUNING["params"], "pruning_target": 0.3}}
    cases = [
        (_trainer(tmp_path, data, config=other_config, save_strategy="epoch"), checkpoint,
         PruningStateError, "another pruning config: params.pruning_target: 0.5 saved, 0.3 now"),
        (_trainer(tmp_path, data, model=other_model, save_strategy="epoch"), checkpoint,
         PruningStateError, "belongs to another model: ResNetForImageClassification with pruning groups of sizes "
                            "[8, 8, 32, 16], not ResNetForImageClassification with [4, 4, 16, 8]"),
        (_trainer(tmp_path, data, save_strategy="epoch"), stateless, HfPruneError,
         "has no pruning state in trainer_state.json"),
        (_trainer(tmp_path, data, save_strategy="epoch"), overwritten, PruningStateError,
         "are not those its pruning state was saved with"),
    ]
    for trainer, path, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            trainer.train(resume_from_checkpoint=str(path))
    assert _snapshot(tmp_path) == before


def test_half_the_flops_pruned_stays_within_two_points_of_dense(tmp_path):
    """timm's test_resnet on 16-px digits: 5 dense epochs, then 6 epochs pruning to 50% of FLOPs on the
    exponential schedule (levels 0, 0.29, 0.5 over 3 epochs, then fine-tuning with frozen masks)."""
    data = load_digits(image_size=16)
    set_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    args = dict(per_device_train_batch_size=64, learning_rate=3e-3, lr_scheduler_type="cosine")
    dense = Trainer(trainer_model(model), training_args(tmp_path / "dense", num_train_epochs=5, **args),
                    train_dataset=data.train, eval_dataset=data.test, compute_metrics=_accuracy)
    dense.train()
    dense_accuracy = dense.evaluate()["eval_accuracy"]
    config = {"params": {"schedule": "exponential", "pruning_flops_target": 0.5, "pruning_steps": 3,
                         "channel_multiple": 4}}
    trainer = PruningTrainer(model, training_args(tmp_path / "pruned", num_train_epochs=6, **args),
                             pruning_config=config, train_dataset=data.train, eval_dataset=data.test,
                             compute_metrics=_accuracy)
    trainer.train()
    pruned_accuracy = trainer.evaluate()["eval_accuracy"]
    assert trainer.controller.compression_rate >= 0.5
    assert dense_accuracy >= 0.97
    assert pruned_accuracy >= dense_accuracy - 0.02, (dense_accuracy, pruned_accuracy)
    small = trainer.strip_model()
    assert small is model and trainer.evaluate()["eval_accuracy"] == pruned_accuracy
    trainer.save_model(tmp_path / "small")  # the timm model's own keys and (smaller) shapes
    saved = load_file(tmp_path / "small" / "model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in small.state_dict().items()}


def test_train_runs_the_learned_ranking_search_itself(tmp_path, data):
    coeffs = tmp_path / "coeffs.json"
    legr = {"generations": 2, "train_steps": 1, "population_size": 2, "num_samples": 2, "mutate_percent": 1.0}
    config = {"params": {**PRUNING["params"], "interlayer_ranking_type": "learned_ranking", "legr_params": legr,
                         "save_ranking_coeffs_path": str(coeffs)}}
    trainer = _trainer(tmp_path / "run", data, config=config, num_train_epochs=2, save_strategy="epoch")
    identity = trainer.controller.ranking
    trainer.train()
    learned = trainer.controller.ranking
    assert learned is not identity  # the search ran and adopted its best candidate (possibly the identity)
    saved = json.loads(coeffs.read_text())["groups"]
    assert {int(g): (v["a"], v["b"]) for g, v in saved.items()} == learned.coefficients
    assert trainer.controller.pruning_level == 0.5
    # resuming restores the searched coefficients from the checkpoint instead of searching again
    resumed = _trainer(tmp_path / "run", data, config=config, num_train_epochs=2, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-8"))
    assert resumed.controller.ranking.coefficients == learned.coefficients
    assert same_tensors(masks_of(resumed.controller), masks_of(trainer.controller))


def test_learned_ranking_is_searched_before_training(tmp_path, data):
    coeffs = tmp_path / "coeffs.json"
    legr = {"generations": 3, "train_steps": 2, "population_size": 3, "num_samples": 2, "mutate_percent": 1.0}
    config = {"params": {**PRUNING["params"], "interlayer_ranking_type": "learned_ranking", "legr_params": legr,
                         "save_ranking_coeffs_path": str(coeffs)}}
    trainer = _trainer(tmp_path / "run", data, config=config, num_train_epochs=1)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    coefficients = trainer.learn_ranking()
    assert coeffs.is_file() and trainer.controller.ranking is coefficients
    saved = json.loads(coeffs.read_text())["groups"]
    assert {int(g): (v["a"], v["b"]) for g, v in saved.items()} == coefficients.coefficients
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())  # search leaves weights
    trainer.train()  # does not search again
    assert trainer.controller.ranking is coefficients
    no_eval = PruningTrainer(tiny_resnet(), training_args(tmp_path / "x"), pruning_config=config, train_dataset=data.train)
    with pytest.raises(HfPruneError, match="eval_dataset"):
        no_eval.train()
