"""``hf-prune train RECIPE``: the whole job, from a recipe to a smaller model, its ONNX file and a report.

Order of work: validate the recipe, check the output directory, load the model and the data (every
bad input fails here, before any training), optional dense warm-up, pruning with the schedule and
fine-tuning (``PruningTrainer``), strip, ``save_pretrained``, ONNX export with a latency comparison,
report. Under ``accelerate launch`` every process trains; only the main process writes files.

Crash safety: running the same recipe again after a kill continues where the first run stopped. The
model is built from the recipe's seed; the dense warm-up's result is kept (``dense/warmup``, published
whole) and not trained again; pruning resumes from the newest complete checkpoint (see
:mod:`hf_prune.integrations.checkpoints`); ``model/``, ``onnx/`` and ``onnx_dense/`` replace their
previous versions only once written whole. ``report.json`` marks a finished run: it is removed when a
run starts and written last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import HfPruneError
from ..integrations.checkpoints import publish_directory, published
from ..model_kind import example_inputs, images_of
from .data import TrainEvalData, load_image_data
from .preprocessing import transforms_for
from .models import load_model
from .recipes import Recipe, RecipeError, load_recipe
from .report import RunReport, write_report


class OutputDirError(HfPruneError, OSError):
    """The output directory cannot be written."""


@dataclass
class RunResult:
    report: RunReport
    output_dir: Path
    files: dict[str, Path]


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputDirError(f"output directory {str(directory)!r} is not writable: {e.strerror or e}") from e


def _build_model(recipe: Recipe) -> nn.Module:
    spec = recipe.model
    if spec.config is not None:
        from transformers import AutoConfig, AutoModelForImageClassification

        config_dict = dict(spec.config)
        model_type = config_dict.pop("model_type", None)
        if model_type is None:
            raise RecipeError("model.config needs a 'model_type' (e.g. resnet, vit, convnext)")
        config = AutoConfig.for_model(model_type, **config_dict)
        if spec.num_classes is not None:
            config.num_labels = spec.num_classes
        if spec.image_size is not None and hasattr(config, "image_size"):
            config.image_size = spec.image_size
        return AutoModelForImageClassification.from_config(config).eval()
    return load_model(spec.name, num_classes=spec.num_classes, pretrained=spec.pretrained, image_size=spec.image_size)[0]


def _seeded_inputs(model: nn.Module, image_size: int | None) -> Any:
    """Example inputs with the same values on every process of a distributed run."""
    return example_inputs(model, size=image_size, generator=torch.Generator().manual_seed(0))


def _load_data(recipe: Recipe, model: nn.Module, example_inputs: Any) -> TrainEvalData:
    x = images_of(example_inputs)
    d = recipe.data
    transforms = transforms_for(model, d.image_size or int(x.shape[-1]), d.mean, d.std, d.augment)
    return load_image_data(d.source, transforms, name=d.name, path=d.path, train_split=d.train_split,
                           eval_split=d.eval_split, image_column=d.image_column, label_column=d.label_column,
                           limit=d.limit)


def accuracy(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for image classification."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def ort_latency(onnx_path: Path, shape: tuple[int, ...], runs: int = 20, threads: int = 2) -> float:
    """Median ONNX Runtime CPU latency (ms) of one batch of ``shape``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _dense_warmup(recipe: Recipe, model: nn.Module, data: TrainEvalData, out: Path) -> dict[str, float]:
    """Train ``model`` dense for ``dense_epochs``; its weights and metrics are kept in ``dense/warmup`` and
    reused instead of training again when the run is started again."""
    from safetensors.torch import load_model, save_model
    from transformers import Trainer

    from ..integrations.trainer import trainer_model

    done = published(out / "dense" / "warmup")
    if done is not None:
        load_model(model, done / "model.safetensors")
        return json.loads((done / "metrics.json").read_text())
    args = dataclasses.replace(recipe.training, output_dir=str(out / "dense"), num_train_epochs=recipe.dense_epochs,
                               save_strategy="no", load_best_model_at_end=False)
    trainer = Trainer(model=trainer_model(model), args=args, train_dataset=data.train,
                      eval_dataset=data.eval, compute_metrics=accuracy)
    trainer.train()
    metrics = _metrics(trainer.evaluate()) if data.eval is not None else {}
    if trainer.is_world_process_zero():
        def write(tmp: Path) -> None:
            save_model(model, tmp / "model.safetensors")
            (tmp / "metrics.json").write_text(json.dumps(metrics))

        publish_directory(out / "dense" / "warmup", write)
    return metrics


def _metrics(raw: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval_"): v for k, v in raw.items() if k in ("eval_accuracy", "eval_loss")}


def run_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunResult:
    """Run the recipe at ``path`` end to end; returns the report and the files written."""
    from ..integrations.onnx import ONNX_NAME, export_onnx
    from ..integrations.serialization import save_pretrained
    from ..integrations.trainer import PruningTrainer

    from transformers import set_seed

    start = time.perf_counter()
    recipe = load_recipe(path, overrides)
    out = Path(recipe.training.output_dir).expanduser()
    _check_writable(out)
    args = dataclasses.replace(recipe.training, output_dir=str(out / "checkpoints"))
    if args.process_index == 0:
        (out / "report.json").unlink(missing_ok=True)  # the run is not finished (again) until written last
        for leftover in [*out.glob(".*.tmp"), *out.glob("dense/.*.tmp")]:  # written aside by a killed run
            shutil.rmtree(leftover, ignore_errors=True)
    set_seed(args.seed)  # the same weights in every process and when the run is started again
    model = _build_model(recipe)
    example_inputs = _seeded_inputs(model, recipe.model.image_size)
    data = _load_data(recipe, model, example_inputs)
    report = RunReport(recipe=str(path), model=recipe.model.name or recipe.model.config.get("model_type", "?"))

    if recipe.dense_epochs > 0:
        report.dense_metrics = _dense_warmup(recipe, model, data, out)
    trainer = PruningTrainer(model=model, args=args, pruning_config=recipe.pruning,
                             train_dataset=data.train, eval_dataset=data.eval, compute_metrics=accuracy,
                             example_inputs=example_inputs)
    if recipe.dense_epochs == 0 and data.eval is not None:
        report.dense_metrics = _metrics(trainer.evaluate())
    trainer.train(resume_from_checkpoint=True if any(Path(args.output_dir).glob("checkpoint-*")) else None)
    report.level_history = [(h["epoch"], h["pruning/level"]) for h in trainer.state.log_history
                            if "pruning/level" in h and "epoch" in h]
    report.statistics = trainer.controller.statistics()
    files: dict[str, Path] = {}
    if recipe.outputs.strip:
        model = trainer.strip_model()
    if data.eval is not None:
        report.pruned_metrics = _metrics(trainer.evaluate())
    if trainer.is_world_process_zero():
        if recipe.outputs.strip and trainer.controller.latency is not None:  # a latency target, checked there
            report.statistics.latency_measured_ms = trainer.controller.measure_latency(model)
        if recipe.outputs.save:
            files["model"] = save_pretrained(model, out / "model", controller=None if recipe.outputs.strip else trainer.controller)
            report.artifacts["model"] = str(files["model"])
        if recipe.outputs.onnx:
            publish_directory(out / "onnx", lambda tmp: export_onnx(model, tmp, controller=trainer.controller))
            files["onnx"] = out / "onnx" / ONNX_NAME
            report.artifacts["onnx"] = str(files["onnx"])
            report.onnx = _onnx_speed(recipe, example_inputs, files["onnx"], out)
        if recipe.outputs.push_to_hub:
            from ..integrations.hub import push_to_hub

            push_to_hub(model, recipe.outputs.push_to_hub, controller=trainer.controller, recipe=str(path))
        report.seconds = time.perf_counter() - start
        if recipe.outputs.report:
            files.update({f"report_{k}": v for k, v in _write_report_last(report, out).items()})
    # Every process waits for the main one's products, then the process group is closed: a process that exits
    # with its gloo threads still running can abort ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return RunResult(report, out, files)


def _write_report_last(report: RunReport, out: Path) -> dict[str, Path]:
    """:func:`write_report` into a temporary directory, then move its files into ``out``, ``report.json``
    last: its presence means the whole run finished."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".report.", suffix=".tmp") as tmp:
        written = write_report(report, tmp)
        for path in sorted(Path(tmp).iterdir(), key=lambda p: p.name == "report.json"):
            os.replace(path, out / path.name)
    return {key: out / path.name for key, path in written.items()}


def _onnx_speed(recipe: Recipe, example_inputs: Any, pruned_onnx: Path, out: Path) -> dict[str, float]:
    """Latency of the pruned ONNX model next to the dense one (a fresh dense export of the same model)."""
    from ..integrations.onnx import ONNX_NAME, export_onnx

    dense = _build_model(recipe)
    publish_directory(out / "onnx_dense", lambda tmp: export_onnx(dense, tmp))
    dense_onnx = out / "onnx_dense" / ONNX_NAME
    x = images_of(example_inputs)
    shape = (8, *x.shape[1:])
    dense_ms, pruned_ms = ort_latency(dense_onnx, shape), ort_latency(pruned_onnx, shape)
    return {"batch": 8, "dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": dense_ms / pruned_ms}
