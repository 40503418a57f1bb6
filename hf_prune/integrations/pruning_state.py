"""The state of a pruning run in progress, in one format: masks, levels and schedule position, with the
pruning config, example-input shapes and model signature they belong to.

:class:`~.distributed.PruningRun` keeps it in a Trainer's or accelerate's checkpoints;
:func:`save_pruning_state` writes it beside a model saved with its masks still active, and
:func:`load_pruning_controller` builds the controller back from it. :func:`load_pruning_state` checks a
state against a controller before loading it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import PruningStateError
from ..files import write_atomic

if TYPE_CHECKING:
    from ..algorithm.controller import FilterPruningController

__all__ = ["FORMAT_VERSION", "STATE_NAME", "load_pruning_controller", "load_pruning_state", "pruning_state",
           "save_pruning_state"]

FORMAT_VERSION = 1
STATE_NAME = "pruning_state.pt"


def _input_shapes(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return list(inputs.shape)
    if isinstance(inputs, Mapping):
        return {k: list(v.shape) for k, v in inputs.items()}
    return None


def _random_inputs(shapes: Any) -> Any:
    if isinstance(shapes, Mapping):
        return {k: torch.randn(*v) for k, v in shapes.items()}
    return None if shapes is None else torch.randn(*shapes)


def _signature(controller: FilterPruningController) -> dict[str, Any]:
    """What a state must match: the model class, the sizes of its pruning groups and the pruning config."""
    return {
        "model_class": type(controller.model).__name__,
        "groups": {gid: group.size for gid, group in controller.groups.items()},
        "config": controller.config.to_dict(),
    }


def pruning_state(controller: FilterPruningController) -> dict[str, Any]:
    """``controller``'s masks and schedule position, with the config, example-input shapes and model
    signature (class, sizes of the pruning groups) they belong to."""
    return {
        "format_version": FORMAT_VERSION,
        **_signature(controller),
        "example_inputs": _input_shapes(controller.analysis.example_inputs),
        "controller": controller.state_dict(),
    }


def load_pruning_state(controller: FilterPruningController, state: Mapping[str, Any],
                       source: str | os.PathLike[str] | None = None) -> None:
    """Load a :func:`pruning_state` into ``controller``; :class:`PruningStateError` (naming ``source``) if
    it is no pruning state, or belongs to another model or pruning config."""
    where = f" in {os.fspath(source)}" if source is not None else ""
    _check_version(state, where)
    mine = _signature(controller)  # not the whole state: its masks would be copied only to be compared
    if (state["model_class"], state["groups"]) != (mine["model_class"], mine["groups"]):
        raise PruningStateError(
            f"the pruning state{where} belongs to another model: {state['model_class']} with pruning groups "
            f"of sizes {list(state['groups'].values())}, not {mine['model_class']} with "
            f"{list(mine['groups'].values())}")
    if diff := _differences(state["config"], mine["config"]):
        raise PruningStateError(f"the pruning state{where} was saved with another pruning config: "
                                + "; ".join(f"{key}: {saved!r} saved, {now!r} now" for key, saved, now in diff))
    try:
        controller.load_state_dict(state["controller"])
    except PruningStateError as exc:
        raise PruningStateError(f"the pruning state{where} does not fit this model: {exc}") from None


def _check_version(state: Any, where: str) -> None:
    if not isinstance(state, Mapping) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, Mapping) else None
        raise PruningStateError(f"no hf_prune pruning state{where}: format_version {version!r}, this hf_prune reads "
                                f"version {FORMAT_VERSION} (a newer hf_prune wrote it? upgrade hf_prune)")


def _differences(saved: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every leaf where two config dicts differ."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        return [diff for key in sorted(saved.keys() | now.keys())
                for diff in _differences(saved.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if saved == now else [(prefix.rstrip("."), saved, now)]


def save_pruning_state(controller: FilterPruningController, directory: str | os.PathLike[str]) -> Path:
    """Write :func:`pruning_state` to ``directory/pruning_state.pt`` (atomically)."""
    path = Path(directory) / STATE_NAME
    state = pruning_state(controller)
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return path


def load_pruning_controller(model: nn.Module, directory: str | os.PathLike[str],
                            data_loader: Iterable[Any] | None = None) -> FilterPruningController:
    """The controller saved with a masked model (:func:`save_pruning_state`), re-attached to that model
    reloaded by :func:`~.serialization.from_pretrained`: masks, levels and the schedule position are
    restored, and pruning continues where it stopped."""
    from ..algorithm.controller import create_pruning_controller
    from ..config import PruningConfig

    path = Path(directory) / STATE_NAME
    if not path.is_file():
        raise PruningStateError(f"{directory}: missing {STATE_NAME} (the directory holds no pruning run in progress)")
    state = torch.load(path, weights_only=True)
    _check_version(state, f" in {path}")
    controller = create_pruning_controller(model, PruningConfig.from_dict(state["config"]),
                                           _random_inputs(state["example_inputs"]), data_loader)
    load_pruning_state(controller, state, path)
    return controller
