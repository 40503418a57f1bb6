"""AcceleratedPruner in a single-process accelerate loop: schedule, save_state / load_state, strip."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_prune import HfPruneError
from hf_prune.integrations.accelerate import AcceleratedPruner
from hf_prune.errors import PruningStateError
from scripts.common import PRUNING, digits, masks_of, same_tensors, single_thread, tiny_resnet  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data():
    return digits()


def _prepared(config, data, seed: int = 0):
    """(accelerator, pruner, prepared model, optimizer, loader), the pruner built before ``prepare``."""
    accelerator = Accelerator(cpu=True)
    model = tiny_resnet(seed)
    loader = DataLoader(data.train, batch_size=32, shuffle=True)
    pruner = AcceleratedPruner(accelerator, model, config, data_loader=loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return (accelerator, pruner, *accelerator.prepare(model, optimizer, loader))


def test_custom_loop_prunes_saves_its_state_and_strips(tmp_path, data):
    accelerator, pruner, model, optimizer, loader = _prepared(PRUNING, data)
    losses = []
    for _ in range(3):
        pruner.epoch_step()
        for batch in loader:
            loss = model(**batch).loss + pruner.loss()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert pruner.log_values()["pruning/level"] == 0.5 and pruner.log_values()["pruning/compression_stage"] == 2
    assert pruner.controller.frozen and pruner.controller.scheduler.state_dict() == {"current_epoch": 2,
                                                                                     "current_step": 23}
    accelerator.save_state(tmp_path / "state")

    other = {"params": {**PRUNING["params"], "pruning_steps": 4}}
    with pytest.raises(PruningStateError, match="params.pruning_steps: 2 saved, 4 now"):
        _prepared(other, data, seed=1)[0].load_state(tmp_path / "state")
    accelerator_2, restored, *_ = _prepared(PRUNING, data, seed=1)
    accelerator_2.load_state(tmp_path / "state")
    assert same_tensors(masks_of(restored.controller), masks_of(pruner.controller))
    assert restored.controller.scheduler.state_dict() == pruner.controller.scheduler.state_dict()
    assert same_tensors(restored.model.state_dict(), pruner.model.state_dict())

    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        masked = model(**batch).logits
        small = pruner.strip_model()
        assert small is pruner.model and small is accelerator.unwrap_model(model)
        torch.testing.assert_close(small(**batch).logits, masked)
    with pytest.raises(HfPruneError, match="stripped"):
        pruner.step()


def test_wrong_config_type_is_a_clear_error(data):
    with pytest.raises(TypeError, match="pruning_config must be"):
        AcceleratedPruner(Accelerator(cpu=True), tiny_resnet(), ["pruning_target", 0.5])


def test_data_loader_is_handed_to_the_controller(data):
    config = {"pruning_init": 0.25, "params": PRUNING["params"]}
    accelerator, pruner, model, *_ = _prepared(config, data)
    before = {k: v.clone() for k, v in pruner.model.state_dict().items() if "running_mean" in k}
    pruner.controller.set_pruning_level(0.4, run_batchnorm_adaptation=True)  # re-estimates on the loader
    after = {k: v for k, v in pruner.model.state_dict().items() if "running_mean" in k}
    assert pruner.controller.pruning_level == 0.4
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_state_whose_weights_were_overwritten_is_refused(tmp_path, data):
    accelerator, pruner, model, optimizer, loader = _prepared(PRUNING, data)
    pruner.epoch_step()

    def train_step():
        batch = next(iter(loader))
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()

    train_step()
    accelerator.save_state(tmp_path / "a")
    train_step()
    accelerator.save_state(tmp_path / "b")
    # a save into "a" cut short after the weights: new weights, the old pruning state
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    accelerator_2, *_ = _prepared(PRUNING, data, seed=1)
    with pytest.raises(PruningStateError, match="saved with other weights than those just loaded"):
        accelerator_2.load_state(tmp_path / "a")
    accelerator_2.load_state(tmp_path / "b")


def test_save_checkpoint_replaces_the_previous_one_whole(tmp_path, data):
    accelerator, pruner, model, optimizer, loader = _prepared(PRUNING, data)
    assert pruner.load_checkpoint(tmp_path / "ckpt") is False  # nothing to resume yet
    pruner.epoch_step()
    pruner.save_checkpoint(tmp_path / "ckpt")
    pruner.epoch_step()
    pruner.save_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or previous directory left
    accelerator_2, restored, *_ = _prepared(PRUNING, data, seed=1)
    assert restored.load_checkpoint(tmp_path / "ckpt") is True
    assert restored.controller.scheduler.current_epoch == 1
    assert same_tensors(restored.model.state_dict(), pruner.model.state_dict())
