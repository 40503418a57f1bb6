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


def _arm_accelerate_points(point: str, n: int) -> None:
    import accelerate.accelerator

    from hf_prune.integrations import accelerate as integration

    if point == "custom_state":  # weights, optimizer and RNG of checkpoint n written, not the pruning state
        _kill_on_call(accelerate.accelerator, "save_custom_state", n, before=True)
    elif point == "saved_state":  # checkpoint n complete in its temporary directory, not swapped in
        _kill_on_call(accelerate.accelerator.Accelerator, "save_state", n)
    elif point == "swap":  # between moving the previous checkpoint away and moving the new one in
        original, calls = integration.swap_in, [0]

        def swap_in(new: Any, path: Any) -> None:
            calls[0] += 1
            if calls[0] == n and Path(path).exists():
                os.replace(path, Path(path).with_name(f".{Path(path).name}.old"))
                _die()
            original(new, path)

        integration.swap_in = swap_in
    else:
        raise ValueError(f"unknown kill point {point!r}")


def _arm_cli_points(point: str, n: int) -> None:
    from hf_prune.app import run
    from hf_prune.integrations import checkpoints, serialization

    if point == "publish":  # the n-th directory written aside (warm-up, onnx, onnx_dense), not swapped in
        _kill_on_call(checkpoints, "swap_in", n, before=True)
    elif point == "save_pretrained":  # model/ written aside, not moved in
        _kill_on_call(serialization, "_save_timm", n)
    elif point == "report":  # report files written aside, not moved
        _kill_on_call(run, "write_report", n)
    elif point in ("save_model", "trainer_state_half"):
        _arm_trainer_points(point, n)
    else:
        raise ValueError(f"unknown kill point {point!r}")


_POINTS = {"trainer": _arm_trainer_points, "accelerate": _arm_accelerate_points, "cli": _arm_cli_points}


def _arm(kill: str | None, path: str) -> None:
    """Set up the kill described by ``kill`` (see the module docstring) in a run of ``path``."""
    if kill is None:
        return
    point, value = kill.split(":")
    if point == "random":
        timer = threading.Timer(float(value), _die)
        timer.daemon = True
        timer.start()
    else:
        _POINTS[path](point, int(value))


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
    _arm(kill, "trainer")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    _save_result(out_dir, trainer.controller, trainer.model, time.perf_counter() - start, start_step.step)


def accelerate_run(out: str, kill: str | None = None) -> None:
    """AcceleratedPruner in a custom loop, a crash-safe checkpoint after every epoch; resumes from it if any."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from torch.utils.data import DataLoader

    from hf_prune.integrations.accelerate import AcceleratedPruner

    torch.set_num_threads(1)
    out_dir = Path(out)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model = tiny_resnet()
    loader = DataLoader(digits(limit=96).train, batch_size=16, shuffle=True)
    pruner = AcceleratedPruner(accelerator, model, PRUNING, data_loader=loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    resumed = pruner.load_checkpoint(out_dir / "checkpoint")
    start_epoch = pruner.controller.scheduler.current_epoch + 1
    _arm(kill, "accelerate")
    start = time.perf_counter()
    for epoch in range(start_epoch, 5):
        pruner.epoch_step()
        loader.set_epoch(epoch)
        for batch in loader:
            accelerator.backward(model(**batch).loss + pruner.loss())
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()
        pruner.save_checkpoint(out_dir / "checkpoint")
    _save_result(out_dir, pruner.controller, pruner.model, time.perf_counter() - start,
                 start_epoch if resumed else -1)


DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
CLI_OVERRIDES = ["model.name=timm/test_resnet", "model.image_size=16", "data.limit=96", "dense_epochs=1",
                 "training.num_train_epochs=3", "pruning.params.pruning_steps=2", "training.logging_steps=1",
                 "training.per_device_train_batch_size=16", "training.save_strategy=steps", "training.save_steps=3",
                 "training.disable_tqdm=true"]


def cli_run(out: str, kill: str | None = None) -> None:
    """``hf-prune train`` on the demo recipe (tiny): warm-up, pruning with a checkpoint every 3 steps,
    strip, model/, ONNX, report. The result holds the saved model's weights."""
    import hf_prune
    from hf_prune.app import run
    from hf_prune.app.cli import main
    from hf_prune.integrations.trainer import PruningTrainer

    seen: dict[str, Any] = {"resumed_from": None, "warmup_reused": False}
    choose, find_warmup = PruningTrainer._last_complete_checkpoint, run.published

    def last_complete_checkpoint(self: PruningTrainer) -> str | None:
        seen["resumed_from"] = choose(self) and Path(choose(self)).name
        return choose(self)

    def published(path: Any) -> Path | None:
        seen["warmup_reused"] = find_warmup(path) is not None
        return find_warmup(path)

    PruningTrainer._last_complete_checkpoint, run.published = last_complete_checkpoint, published
    torch.set_num_threads(1)
    out_dir = Path(out)
    overrides = [arg for o in [*CLI_OVERRIDES, f"training.output_dir={out_dir / 'run'}"] for arg in ("--set", o)]
    _arm(kill, "cli")
    start = time.perf_counter()
    if main(["train", str(DEMO), *overrides]) != 0:
        raise SystemExit(1)
    seconds = time.perf_counter() - start
    report = json.loads((out_dir / "run" / "report.json").read_text())
    state = hf_prune.from_pretrained(out_dir / "run" / "model").state_dict()
    # the weights decide (masks are the stripped shapes); report["level_history"] may lack the log entries a
    # Trainer made after its last checkpoint (e.g. the last epoch's evaluation), which a resume does not replay
    torch.save({"masks": {}, "scheduler": None, "state": state, "seconds": seconds, **seen}, out_dir / "result.pt")
