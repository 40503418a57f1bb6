"""AcceleratedPruner in a single-process accelerate loop: schedule, save_state / load_state, strip."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_prune import HfPruneError
from hf_prune.integrations.accelerate import AcceleratedPruner
from hf_prune.integrations.distributed import PruningStateError
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
