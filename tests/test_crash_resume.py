"""Crash safety: a real training process is SIGKILLed (inside a save, between saves, at random moments),
started again on the same directory, and must end bit-identical (masks, schedule, every weight) to a run
that was never interrupted. ``bench/crash_resume.py`` counts the same over more random kills.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from scripts import crash_children
from scripts.common import same_tensors
from scripts.crash_harness import kill_and_resume, run_child, same_result


def _reference(run, tmp_path_factory) -> dict:
    """What an uninterrupted run of ``run`` ends with."""
    out = tmp_path_factory.mktemp("reference")
    assert run_child(run, out) == 0
    return torch.load(out / "result.pt", weights_only=True)


def _random_kills(run, tmp_path: Path, reference: dict, seed: int, kills: int = 3) -> None:
    """Kill ``run`` at ``kills`` random moments of its uninterrupted duration; each restart must end as the
    reference did."""
    rng = random.Random(seed)
    for i in range(kills):
        delay = rng.uniform(0, reference["seconds"])
        _, result = kill_and_resume(run, tmp_path / str(i), f"random:{delay:.3f}")
        assert same_result(result, reference), f"kill after {delay:.3f} s"


@pytest.fixture(scope="module")
def trainer_reference(tmp_path_factory) -> dict:
    return _reference(crash_children.trainer_run, tmp_path_factory)


@pytest.mark.parametrize("kill, resumed_at", [
    ("save_model:2", 3),          # checkpoint-6: weights written, no trainer state yet
    ("trainer_state_half:3", 6),  # checkpoint-9's trainer_state.json cut in the middle
    ("trainer_state_done:4", 12), # checkpoint-12 complete; old checkpoint not rotated, no pruning_state.pt
    ("pruning_state_file:1", 3),  # checkpoint-3 complete, killed in on_save
    ("save_model:1", 0),          # no complete checkpoint: starts again from the beginning
])
def test_trainer_killed_inside_a_save_resumes_bit_identically(tmp_path, trainer_reference, kill, resumed_at):
    exit_code, result = kill_and_resume(crash_children.trainer_run, tmp_path, kill)
    assert exit_code == -9
    assert result["start_step"] == resumed_at
    assert same_result(result, trainer_reference)


def test_trainer_killed_at_random_moments_resumes_bit_identically(tmp_path, trainer_reference):
    _random_kills(crash_children.trainer_run, tmp_path, trainer_reference, seed=0)


@pytest.fixture(scope="module")
def accelerate_reference(tmp_path_factory) -> dict:
    return _reference(crash_children.accelerate_run, tmp_path_factory)


@pytest.mark.parametrize("kill, resumed_at", [
    ("custom_state:2", 1),  # epoch 1's checkpoint: weights written, pruning state not: epoch 0's is kept
    ("saved_state:3", 2),   # epoch 2's checkpoint complete but not yet in place
    ("swap:3", 2),          # epoch 1's checkpoint moved aside, epoch 2's not yet in place
    ("custom_state:1", -1), # no checkpoint yet: starts from the beginning
])
def test_accelerate_killed_inside_a_save_resumes_bit_identically(tmp_path, accelerate_reference, kill, resumed_at):
    exit_code, result = kill_and_resume(crash_children.accelerate_run, tmp_path, kill)
    assert exit_code == -9
    assert result["start_step"] == resumed_at  # the first epoch the restart trains
    assert same_result(result, accelerate_reference)


@pytest.mark.slow  # bench/crash_resume.py runs 10 per path
def test_accelerate_killed_at_random_moments_resumes_bit_identically(tmp_path, accelerate_reference):
    _random_kills(crash_children.accelerate_run, tmp_path, accelerate_reference, seed=1)


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> dict:
    return _reference(crash_children.cli_run, tmp_path_factory)


def _check_products_of_a_killed_run(run: Path) -> None:
    """No report (the mark of a finished run); model/ absent or whole."""
    import hf_prune

    assert not (run / "report.json").exists()
    if (run / "model").exists():
        hf_prune.from_pretrained(run / "model")


@pytest.mark.parametrize("kill, warmup_reused, resumed_from", [
    ("publish:1", False, None),                   # warm-up done, its result not yet in place: trained again
    ("trainer_state_half:2", True, "checkpoint-3"),  # pruning checkpoint-6 cut short
    ("save_pretrained:1", True, "checkpoint-18"),  # model/ written aside
    ("report:1", True, "checkpoint-18"),           # everything but the report
])
def test_cli_killed_resumes_bit_identically_and_never_looks_finished(tmp_path, cli_reference, kill, warmup_reused,
                                                                      resumed_from):
    assert run_child(crash_children.cli_run, tmp_path, kill) == -9
    _check_products_of_a_killed_run(tmp_path / "run")
    assert run_child(crash_children.cli_run, tmp_path) == 0
    assert not list((tmp_path / "run").glob("**/.*.tmp"))  # what the killed run wrote aside is cleaned up
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert (result["warmup_reused"], result["resumed_from"]) == (warmup_reused, resumed_from)
    assert same_tensors(result["state"], cli_reference["state"])


@pytest.mark.slow  # bench/crash_resume.py runs 10 per path
def test_cli_killed_at_random_moments_resumes_bit_identically(tmp_path, cli_reference):
    rng = random.Random(2)
    for i in range(2):
        delay = rng.uniform(0, cli_reference["seconds"])
        out = tmp_path / str(i)
        if run_child(crash_children.cli_run, out, f"random:{delay:.3f}") == -9:
            _check_products_of_a_killed_run(out / "run")
        assert run_child(crash_children.cli_run, out) == 0
        result = torch.load(out / "result.pt", weights_only=True)
        assert same_tensors(result["state"], cli_reference["state"]), f"kill after {delay:.3f} s"
