"""Training processes for the crash tests: each trains a tiny model, can SIGKILL itself at a chosen moment,
and, when it finishes, writes what it ended with to ``<out>/result.pt``.

``kill`` is ``None`` (run to the end), ``"random:<seconds>"`` (a timer thread kills the process that
long after training starts: anywhere, inside a save included) or ``"<point>:<n>"`` (the n-th time the
process reaches ``point``, one of :data:`POINTS`). A killed process writes nothing more; the test then
starts the same function again on the same directory and compares its result with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from scripts.common import digits, masks_of, tiny_resnet, training_args

PRUNING = {"pruning_init": 0.1,
           "params": {"schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 2, "channel_multiple": 4,
                      "regularization_weight": 0.01}}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(owner: Any, name: str, n: int, before: bool = False,
                  partial: Callable[..., None] | None = None) -> None:
    """Replace ``owner.name`` by a wrapper that kills the process on its n-th call: before it runs, after
    it returns, or (``partial``) after ``partial(*args)`` wrote part of what the call would write."""
    original, calls = getattr(owner, name), [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            if partial is not None:
                partial(*args, **kwargs)
            if before or partial is not None:
                _die()
        result = original(*args, **kwargs)
        if calls[0] == n:
            _die()
        return result

    setattr(owner, name, wrapper)


def _half_json(state: Any, json_path: str) -> None:
    text = json.dumps({"global_step": state.global_step, "log_history": state.log_history}, indent=2)
    Path(json_path).write_text(text[: len(text) // 2])


def _arm_trainer_points(point: str, n: int) -> None:
    from transformers import Trainer, TrainerState

    from hf_prune.integrations.trainer import PruningCallback

    if point == "save_model":  # weights of checkpoint n written, nothing else
        original, calls = Trainer.save_model, [0]

        def save_model(self: Trainer, output_dir: str | None = None, _internal_call: bool = False) -> None:
            original(self, output_dir, _internal_call)
            if _internal_call:
                calls[0] += 1
                if calls[0] == n:
                    _die()

        Trainer.save_model = save_model
    elif point == "trainer_state_half":  # trainer_state.json of checkpoint n cut in the middle
        _kill_on_call(TrainerState, "save_to_json", n, partial=_half_json)
    elif point == "trainer_state_done":  # checkpoint n complete, rotation and on_save not run
        _kill_on_call(TrainerState, "save_to_json", n)
    elif point == "pruning_state_file":  # inside on_save
        _kill_on_call(PruningCallback, "on_save", n, before=True)
    else:
        raise ValueError(f"unknown kill point {point!r}")


POINTS = ("save_model", "trainer_state_half", "trainer_state_done", "pruning_state_file")


def _arm(kill: str | None) -> None:
    """Set up the kill described by ``kill`` (see the module docstring)."""
    if kill is None:
        return
    point, value = kill.split(":")
    if point == "random":
        timer = threading.Timer(float(value), _die)
        timer.daemon = True
        timer.start()
    else:
        _arm_trainer_points(point, int(value))


def _save_result(out: Path, controller: Any, model: torch.nn.Module, seconds: float, start_step: int) -> None:
    result = {"masks": masks_of(controller), "scheduler": controller.scheduler.state_dict(),
              "state": {k: v.clone() for k, v in model.state_dict().items()}, "seconds": seconds,
              "start_step": start_step}
    torch.save(result, out / "result.pt")


def trainer_run(out: str, kill: str | None = None) -> None:
    """PruningTrainer, checkpoint every 3 steps (2 kept); resumes from the newest complete checkpoint if any."""
    from transformers import TrainerCallback

    from hf_prune.integrations.trainer import PruningTrainer

    class RecordStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.step = state.global_step

    torch.set_num_threads(1)
    out_dir = Path(out)
    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))  # what a user's script does
    start_step = RecordStart()
    args = training_args(out_dir / "checkpoints", num_train_epochs=3, per_device_train_batch_size=16,
                         save_strategy="steps", save_steps=3, save_total_limit=2)
    trainer = PruningTrainer(tiny_resnet(), args, pruning_config=PRUNING, train_dataset=digits(limit=96).train,
                             callbacks=[start_step])
    _arm(kill)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    _save_result(out_dir, trainer.controller, trainer.model, time.perf_counter() - start, start_step.step)
