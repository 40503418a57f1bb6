"""Which checkpoint folder is complete, and directories published whole (files as a killed save leaves them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_prune.integrations.checkpoints import (
    RECORD_KEY, IncompleteCheckpointError, last_complete_checkpoint, publish_directory, published, swap_in,
)


def _checkpoint(root: Path, step: int, state: str | None = "whole", ranks: int = 1) -> Path:
    """A checkpoint folder; ``state``: "whole" (with a pruning record), "plain" (a run without pruning),
    "cut" (trainer_state.json cut short) or None (not written yet)."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    for rank in range(ranks):
        torch.save({"cpu": torch.zeros(1)}, folder / (f"rng_state_{rank}.pth" if ranks > 1 else "rng_state.pth"))
    record = {"weights_sha256": "0", "state": ""} if state == "whole" else None
    text = json.dumps({"global_step": step, "stateful_callbacks": {"PruningCallback": {"attributes": {RECORD_KEY: record}}}})
    if state == "cut":
        text = text[: len(text) // 2]
    if state is not None:
        (folder / "trainer_state.json").write_text(text)
    return folder


def test_newest_complete_checkpoint_is_taken_and_newer_incomplete_ones_named(tmp_path):
    _checkpoint(tmp_path, 3)
    complete = _checkpoint(tmp_path, 10)  # numeric order, not alphabetical
    _checkpoint(tmp_path, 12, state="cut")
    _checkpoint(tmp_path, 15, state=None)
    with pytest.warns(UserWarning, match=r"checkpoint-15 \(no trainer_state.json.*checkpoint-12 \(trainer_state.json is unreadable"):
        assert last_complete_checkpoint(tmp_path) == str(complete)


def test_a_checkpoint_without_pruning_state_is_not_complete(tmp_path):
    _checkpoint(tmp_path, 3, state="plain")
    with pytest.warns(UserWarning, match="no complete checkpoint.*starts from the beginning.*holds no pruning state"):
        assert last_complete_checkpoint(tmp_path) is None
    with pytest.raises(IncompleteCheckpointError, match="no checkpoint to resume from"):
        last_complete_checkpoint(tmp_path / "empty")


def test_every_process_rng_file_must_be_whole(tmp_path):
    folder = _checkpoint(tmp_path, 3, ranks=2)
    assert last_complete_checkpoint(tmp_path, world_size=2) == str(folder)
    data = (folder / "rng_state_1.pth").read_bytes()
    (folder / "rng_state_1.pth").write_bytes(data[: len(data) // 2])  # process 1 was still writing
    with pytest.warns(UserWarning, match="rng_state_1.pth of process 1 is missing or incomplete"):
        assert last_complete_checkpoint(tmp_path, world_size=2) is None


def test_publish_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    publish_directory(target, lambda d: (d / "a").write_text("1"))
    with pytest.raises(RuntimeError):
        publish_directory(target, lambda d: ((d / "a").write_text("2"), (_ for _ in ()).throw(RuntimeError())))
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    new = tmp_path / "new"
    new.mkdir()
    (new / "a").write_text("3")
    target.rename(tmp_path / ".model.old")  # a kill between swap_in's two renames
    assert published(target) == tmp_path / ".model.old"
    swap_in(new, target)
    assert published(target) == target and (target / "a").read_text() == "3"
    assert published(tmp_path / "none") is None
