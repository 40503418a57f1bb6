"""Saving and reloading pruned models (transformers and timm), and pruning runs in progress.

A stripped model differs from the architecture its config describes only in tensor widths and conv
``groups``. ``config.json`` records that difference against the dense model the config builds (see
:func:`~hf_prune.graph.surgery.shape_spec`) in a *pruning record*::

    {"quant_method": "hf_prune", "format_version": 1, "shape_spec": {...}, "dense_shapes": {...},
     "pruning": {...} | null}

- transformers: under ``quantization_config``. Importing hf_prune registers a loader for it with
  transformers' quantization hooks (:mod:`hf_prune.integrations.loader`), so
  ``AutoModel*.from_pretrained(dir)`` narrows the freshly built model before its weights load. The
  quantizer flags are removed after loading (the model is not quantized; it trains and saves
  normally) and the record stays in ``config.quantization_config``. ``dense_shapes`` (the unpruned
  shapes of the recorded tensors) tells which dimensions were pruned, so that a reload with another
  head (``num_labels=3, ignore_mismatched_sizes=True``) narrows only those.
- timm: under ``hf_prune``, beside timm's Hub fields (``architecture``, ``num_classes``,
  ``pretrained_cfg``, ``model_args``); weights in ``model.safetensors``.

In memory, a model carries the record of its last strip, save or load (transformers: in its config;
timm: as ``model.hf_prune_record``). A model whose masks are still active is saved dense, with its
controller in ``pruning_state.pt``, for :func:`load_pruning_controller` to resume.
"""

from __future__ import annotations

import copy
import importlib
import importlib.abc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import HfPruneError, PruningStateError
from ..files import write_atomic
from ..model_kind import input_size, library_of

if TYPE_CHECKING:
    from ..algorithm.controller import FilterPruningController

__all__ = [
    "FORMAT_VERSION", "PrunedModelError", "check_weights", "dense_reference", "ensure_stripped", "from_pretrained",
    "input_size", "load_pruning_controller", "logits", "model_library", "narrow", "pruning_record", "save_pretrained",
    "save_pruning_state", "saved_record", "set_record", "weight_files",
]

FORMAT_VERSION = 1
QUANT_METHOD = "hf_prune"
TIMM_KEY = "hf_prune"
"""Key of the pruning record in a timm config.json."""
TIMM_ATTR = "hf_prune_record"
"""Attribute holding the pruning record of a timm model in memory."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
STATE_NAME = "pruning_state.pt"
CONTROLLER_MODULE = "hf_prune.algorithm.controller"
"""Holds the strip hooks; :func:`_record_strip` joins them."""
QUANTIZERS_MODULE = "transformers.quantizers.auto"
"""transformers' registry of quantizers, where :mod:`hf_prune.integrations.loader` registers itself."""
MAX_LISTED = 5
"""Mismatches named in an error before the rest are counted."""


class PrunedModelError(HfPruneError, ValueError):
    """A pruned model cannot be saved or loaded; the message names the file and the mismatch."""


# ---------------------------------------------------------------------------------------------- records
def model_library(model: nn.Module) -> str:
    """``"transformers"`` or ``"timm"``; anything else raises :class:`PrunedModelError`."""
    library = library_of(model)
    if library is not None:
        return library
    raise PrunedModelError(f"{type(model).__name__} is neither a transformers PreTrainedModel nor a timm model: "
                           "hf_prune saves and loads only those")


def logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``model``'s class logits for a batch of images."""
    if model_library(model) == "timm":
        return model(pixel_values)
    output = model(pixel_values=pixel_values)
    return output.logits if "logits" in output else output.last_hidden_state  # PP-LCNet returns its class scores so


def pruning_record(model: nn.Module) -> dict[str, Any] | None:
    """The pruning record ``model`` carries (from its last strip, save or load), or None."""
    if library_of(model) == "transformers":
        record = getattr(model.config, "quantization_config", None)
        if record is not None and not isinstance(record, dict):
            record = record.to_dict()  # a QuantizationConfigMixin
        return record if isinstance(record, dict) and record.get("quant_method") == QUANT_METHOD else None
    return getattr(model, TIMM_ATTR, None)


def set_record(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Attach ``record`` to ``model`` (transformers: its config; timm: an attribute), or remove it (None)."""
    if library_of(model) == "transformers":
        if record is not None:
            model.config.quantization_config = record
        elif pruning_record(model) is not None:
            del model.config.quantization_config
    elif record is not None:
        setattr(model, TIMM_ATTR, record)
    else:
        model.__dict__.pop(TIMM_ATTR, None)


def dense_reference(model: nn.Module, model_args: dict[str, Any] | None = None) -> nn.Module:
    """The unpruned model that ``model``'s config describes, on the meta device (shapes only).

    ``model_args``: timm constructor arguments the timm factory did not record.
    """
    kind = model_library(model)
    with torch.device("meta"):
        if kind == "timm":
            import timm
            from timm.models._input import get_model_args

            return timm.create_model(model.pretrained_cfg["architecture"], **get_model_args(model, model_args))
        config = copy.deepcopy(model.config)
        if pruning_record(model) is not None:
            del config.quantization_config
        return type(model)(config)


def _summary(controller: FilterPruningController) -> dict[str, Any]:
    """What the record keeps of a controller: its config and statistics (without the per-layer table)."""
    statistics = controller.statistics().to_dict()
    del statistics["layers"]
    return {"model_class": controller.analysis.model_class, "config": controller.config.to_dict(),
            "statistics": statistics}


def _make_record(model: nn.Module, pruning: dict[str, Any] | None,
                 model_args: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The record of ``model``'s shapes, None if it has its config's shapes; checks a reload can rebuild it."""
    from ..graph.surgery import resize_to_spec, shape_spec

    dense = dense_reference(model, model_args)
    spec = shape_spec(model, dense)
    if not spec["shapes"]:
        return None
    dense_state = dense.state_dict()
    dense_shapes = {name: list(dense_state[name].shape) for name in spec["shapes"] if name in dense_state}
    try:
        resize_to_spec(dense, spec)
    except (KeyError, ValueError) as exc:
        raise PrunedModelError(f"{type(model).__name__} cannot be rebuilt from its config ({exc.args[0]}); for a "
                               "timm model, pass the constructor arguments as model_args") from None
    missing = sorted(set(dense.state_dict()) - set(model.state_dict()))
    if missing:
        raise PrunedModelError(f"{type(model).__name__} lacks tensors its config builds: {_listed(missing)}")
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "shape_spec": spec,
            "dense_shapes": dense_shapes, "pruning": pruning}


def _record_strip(model: nn.Module, controller: FilterPruningController) -> None:
    """Strip hook: attach the record, so that transformers' own ``save_pretrained`` writes the new shapes."""
    if library_of(model) is None:
        return
    try:
        set_record(model, _make_record(model, _summary(controller)))
    except PrunedModelError as exc:  # stripping must not fail for want of a reloadable config
        warnings.warn(f"the stripped model's shapes cannot be recorded for a reload: {exc}", UserWarning, stacklevel=3)


def _check_record(record: Any, source: Path) -> None:
    """A record this version of hf_prune can read, or a :class:`PrunedModelError` naming ``source``."""
    if not isinstance(record, dict):
        raise PrunedModelError(f"{source}: the hf_prune record must be a mapping, got {record!r}")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise PrunedModelError(f"{source}: hf_prune format_version {version!r} is not supported (this hf_prune "
                               f"reads version {FORMAT_VERSION}); upgrade hf_prune")
    if not isinstance(record.get("shape_spec"), dict) or "shapes" not in record["shape_spec"]:
        raise PrunedModelError(f"{source}: the hf_prune record has no shape_spec")


def _fitted_spec(model: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """``record``'s shape spec with every unpruned dimension taken from ``model`` (a new head's width, say).

    Records without ``dense_shapes`` (hf_prune 0.1 before it was added) are taken as they are.
    """
    spec, dense_shapes = record["shape_spec"], record.get("dense_shapes")
    if not isinstance(dense_shapes, dict):
        return spec
    state = model.state_dict()
    shapes = {}
    for name, shape in spec["shapes"].items():
        current, dense = state.get(name), dense_shapes.get(name)
        if current is None or dense is None or not len(dense) == len(shape) == current.dim():
            shapes[name] = shape
        else:
            shapes[name] = [n if n != d else c for n, d, c in zip(shape, dense, current.shape)]
    return {**spec, "shapes": shapes}


def narrow(model: nn.Module, record: dict[str, Any], source: Path) -> None:
    """Narrow a freshly built dense model to the shapes ``record`` (read from ``source``) describes."""
    from ..graph.surgery import resize_to_spec

    _check_record(record, source)
    try:
        resize_to_spec(model, _fitted_spec(model, record))
    except (KeyError, ValueError) as exc:
        raise PrunedModelError(f"{source}: the recorded shapes do not fit {type(model).__name__} (a config of a "
                               f"different architecture?): {exc.args[0]}") from None


# ---------------------------------------------------------------------------------------------- weights
def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of the model saved in ``directory`` (sharded or not)."""
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        return [directory / name for name in sorted(set(_read_json(index)["weight_map"].values()))]
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    raise PrunedModelError(f"{directory}: missing {WEIGHTS_NAME} (the model's weights)")


def _model_key(model: nn.Module, key: str) -> str:
    """The state-dict key of ``model`` that a saved tensor ``key`` loads into (transformers saves a
    ``TimmWrapper*`` model's weights without its ``timm_model.`` prefix, as timm's Hub files are)."""
    if isinstance(getattr(model, "timm_model", None), nn.Module) and not key.startswith("timm_model."):
        return f"timm_model.{key}"
    return key


def _weight_shapes(file: Path, source: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the safetensors ``file``; a missing or damaged file is named."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise PrunedModelError(f"{source}: missing {file.name}, listed in {WEIGHTS_INDEX_NAME}")
    try:
        with safe_open(file, framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except SafetensorError as exc:
        raise PrunedModelError(f"{file}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def check_weights(model: nn.Module, files: Sequence[Path], source: str | os.PathLike[str], *,
                  only_recorded: dict[str, Any] | None = None) -> None:
    """Every tensor in the weight ``files`` exists in ``model`` with the same shape, and back.

    ``only_recorded``: a pruning record; then only the pruned dimensions of its tensors are compared, and
    only where the file names them as the model does: transformers' loader reports the rest itself (a new
    head it re-initializes with ``ignore_mismatched_sizes``; transformers 5 renames some checkpoint keys).
    """
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    found = {_model_key(model, key): (shape, file.name)
             for file in files for key, shape in _weight_shapes(file, source).items()}
    if only_recorded is not None:
        recorded, dense = only_recorded["shape_spec"]["shapes"], only_recorded.get("dense_shapes") or {}
        pruned = {key: [(d, n) for d, n in enumerate(shape) if key not in dense or n != dense[key][d]]
                  for key, shape in recorded.items()}
        problems = [f"{key}: {shape} in {file}, {tuple(recorded[key])} recorded in {CONFIG_NAME}"
                    for key, (shape, file) in found.items() if key in pruned and (
                        len(shape) != len(recorded[key]) or any(shape[d] != n for d, n in pruned[key]))]
    else:
        problems = [f"{key}: {shape} in {file}, {expected[key]} recorded in {CONFIG_NAME}"
                    for key, (shape, file) in found.items() if key in expected and shape != expected[key]]
        problems += [f"{key} is missing from the weights" for key in expected if key not in found]
        problems += [f"{key} (in {file}) is not a tensor of {type(model).__name__}"
                     for key, (_, file) in found.items() if key not in expected]
    if problems:
        raise PrunedModelError(f"{source}: the weights do not match the model {CONFIG_NAME} describes: "
                               f"{_listed(problems)}")


# ---------------------------------------------------------------------------------------------- save
@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh directory next to ``target`` that replaces it only once the block succeeds.

    An existing ``target`` must be empty or a saved model (config.json, no subdirectories), so that a
    save never wipes unrelated files (a Trainer's checkpoints, say).
    """
    if target.exists():
        entries = list(target.iterdir()) if target.is_dir() else None
        if entries is None or any(e.is_dir() for e in entries) or (entries and not (target / CONFIG_NAME).is_file()):
            raise PrunedModelError(f"refusing to replace {target}: it is not a saved model directory "
                                   "(save into a new or empty directory)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)
    backup = tmp.with_name(tmp.name.replace(".tmp-", ".old-")) if target.exists() else None
    if backup is not None:
        target.rename(backup)
    tmp.rename(target)
    if backup is not None:
        shutil.rmtree(backup)


def ensure_stripped(model: nn.Module, controller: FilterPruningController | None, action: str) -> nn.Module:
    """``model`` itself if no masks act in it; else a stripped copy (``controller`` required)."""
    from ..algorithm.controller import has_pruning_masks

    if not has_pruning_masks(model):
        return model
    if controller is None:
        raise PrunedModelError(f"cannot {action} a model whose pruning masks are still active: strip it first "
                               "(controller.strip_model(model)) or pass controller=... to strip a copy")
    return controller.strip_model(model, do_copy=True)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike[str], *,
                    controller: FilterPruningController | None = None, model_args: dict[str, Any] | None = None,
                    **kwargs: Any) -> Path:
    """Save a transformers or timm model so that :func:`from_pretrained` rebuilds it exactly.

    transformers models are saved in their own layout (``AutoModel*.from_pretrained`` reloads them
    after ``import hf_prune``), timm models in timm's Hub layout; ``config.json`` records the stripped
    shapes. The save is atomic: files are written to a temporary directory that then replaces
    ``save_directory``, so a failed save leaves the previous one intact.

    ``controller``: its config and statistics go into the record; a model whose masks are still
    active is saved unstripped, with this controller's state (see :func:`load_pruning_controller`).
    ``model_args``: timm constructor arguments the factory did not record. ``kwargs`` go to
    transformers' ``save_pretrained``. Returns the directory.
    """
    from ..algorithm.controller import has_pruning_masks

    kind = model_library(model)
    masked = has_pruning_masks(model)
    if masked and (controller is None or controller.model is not model):
        raise PrunedModelError("the model's pruning masks are still active: pass the controller that owns them "
                               "(controller=...) to save the run in progress, or strip the model first")
    previous = pruning_record(model) or {}
    pruning = _summary(controller) if controller is not None else previous.get("pruning")
    record = _make_record(model, pruning, model_args)
    set_record(model, record)
    target = Path(save_directory)
    with _atomic_directory(target) as tmp:
        if kind == "transformers":
            model.save_pretrained(tmp, **kwargs)
        else:
            _save_timm(model, tmp, record, model_args)
        if masked:
            save_pruning_state(controller, tmp)
    return target


def _save_timm(model: nn.Module, directory: Path, record: dict[str, Any] | None,
               model_args: dict[str, Any] | None) -> None:
    """timm's Hub layout (``save_for_hf``), with the record added to config.json."""
    from timm.models import save_for_hf

    save_for_hf(model, str(directory), model_args=model_args, safe_serialization=True)
    if record is not None:
        config = _read_json(directory / CONFIG_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps({**config, TIMM_KEY: record}, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- load
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PrunedModelError(f"{path.parent}: missing {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PrunedModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PrunedModelError(f"{path}: expected a JSON object")
    return data


def _is_timm_config(config: dict[str, Any]) -> bool:
    """timm's Hub config (transformers' ``TimmWrapperConfig`` also has ``architecture``, and a ``model_type``)."""
    return "architecture" in config and "model_type" not in config


def saved_record(config: dict[str, Any]) -> Any:
    """The pruning record in a parsed config.json (transformers or timm), or None."""
    if _is_timm_config(config):
        return config.get(TIMM_KEY)
    quantization = config.get("quantization_config")
    return quantization if isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD else None


def _local_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a directory, else the downloaded snapshot of the Hub repository it names."""
    directory = Path(path).expanduser()
    if directory.is_dir():
        return directory
    spec = str(path)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise PrunedModelError(f"{spec}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec))
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise PrunedModelError(f"{spec}: not a local directory, and the Hub has no such repository or cannot be "
                               f"reached ({reason})") from exc


def from_pretrained(path: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """The model saved in ``path`` (a directory or a Hub repository id), in eval mode.

    Reads transformers and timm layouts, stripped (shapes recorded by :func:`save_pretrained`) or
    not. ``kwargs`` go to transformers' ``from_pretrained``.
    """
    directory = _local_directory(path)
    config_file = directory / CONFIG_NAME
    config = _read_json(config_file)
    record = saved_record(config)
    if record is not None:
        _check_record(record, config_file)
        for file in weight_files(directory):  # missing or damaged weights: named here, not by transformers
            _weight_shapes(file, source=directory)
    if _is_timm_config(config):
        return _load_timm(directory, config, record)
    if "model_type" in config:
        import transformers

        architectures = config.get("architectures") or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        return (cls or transformers.AutoModelForImageClassification).from_pretrained(directory, **kwargs)
    raise PrunedModelError(f"{config_file}: neither a transformers config (no 'model_type') nor a timm config "
                           "(no 'architecture')")


def _load_timm(directory: Path, config: dict[str, Any], record: dict[str, Any] | None) -> nn.Module:
    import timm
    from safetensors.torch import load_file

    config_file = directory / CONFIG_NAME
    try:
        model = timm.create_model(f"local-dir:{directory}", pretrained=False)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise PrunedModelError(f"{config_file}: cannot build timm model {config['architecture']!r}: {exc}") from None
    if record is not None:
        narrow(model, record, config_file)
    check_weights(model, weight_files(directory), directory)
    for file in weight_files(directory):
        model.load_state_dict(load_file(file), strict=False)
    set_record(model, record)
    return model.eval()


# ---------------------------------------------------------------------------------------------- runs in progress
def _input_shapes(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return list(inputs.shape)
    if isinstance(inputs, dict):
        return {k: list(v.shape) for k, v in inputs.items()}
    return None


def _random_inputs(shapes: Any) -> Any:
    if isinstance(shapes, dict):
        return {k: torch.randn(*v) for k, v in shapes.items()}
    return None if shapes is None else torch.randn(*shapes)


def save_pruning_state(controller: FilterPruningController, directory: str | os.PathLike[str]) -> Path:
    """Write ``controller``'s config, example-input shapes and state to ``directory/pruning_state.pt``."""
    path = Path(directory) / STATE_NAME
    state = {"format_version": FORMAT_VERSION, "config": controller.config.to_dict(),
             "example_inputs": _input_shapes(controller.analysis.example_inputs),
             "controller": controller.state_dict()}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return path


def load_pruning_controller(model: nn.Module, directory: str | os.PathLike[str],
                            data_loader: Iterable[Any] | None = None) -> FilterPruningController:
    """The controller saved with a masked model, re-attached to that model reloaded by :func:`from_pretrained`.

    Masks, levels and the schedule position are restored; pruning continues where it stopped.
    """
    from ..algorithm.controller import create_pruning_controller
    from ..config import PruningConfig

    path = Path(directory) / STATE_NAME
    if not path.is_file():
        raise PruningStateError(f"{directory}: missing {STATE_NAME} (the directory holds no pruning run in progress)")
    state = torch.load(path, weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise PruningStateError(f"{path}: hf_prune format_version {state.get('format_version')!r} is not supported "
                                f"(this hf_prune reads version {FORMAT_VERSION}); upgrade hf_prune")
    controller = create_pruning_controller(model, PruningConfig.from_dict(state["config"]),
                                           _random_inputs(state["example_inputs"]), data_loader)
    try:
        controller.load_state_dict(state["controller"])
    except PruningStateError as exc:
        raise PruningStateError(f"{path}: {exc}") from None
    return controller


class _AfterImport(importlib.abc.MetaPathFinder):
    """Post-import hooks: ``callbacks[name]()`` runs right after module ``name`` is first executed."""

    def __init__(self, callbacks: dict[str, Any]) -> None:
        self.callbacks = callbacks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return None
        if not self.callbacks:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module: ModuleType) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]
        return spec


def _register_strip_hook() -> None:
    from ..algorithm.controller import STRIP_HOOKS

    if _record_strip not in STRIP_HOOKS:
        STRIP_HOOKS.append(_record_strip)


def _register_loader() -> None:
    importlib.import_module("hf_prune.integrations.loader").register()


def register_hooks() -> None:
    """Record a stripped model's shapes at every strip, and let transformers load stripped models, as soon
    as the controller and transformers' quantization machinery are imported (at once where they are):
    ``import hf_prune`` stays fast, and neither hook can be missed."""
    hooks = {CONTROLLER_MODULE: _register_strip_hook, QUANTIZERS_MODULE: _register_loader}
    for module in [m for m in hooks if m in sys.modules]:
        hooks.pop(module)()
    if hooks and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(hooks))


register_hooks()
