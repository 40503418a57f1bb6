"""Crash-safe checkpoints: a checkpoint is complete, pruning state included, or it is not resumed from.

The pruning state of a ``transformers.Trainer`` checkpoint travels inside ``trainer_state.json``, the
file the Trainer writes last (its ``ExportableState`` mechanism, see :class:`.trainer.PruningCallback`),
together with a digest of the model weights it belongs to. So the masks and schedule position exist
exactly when the Trainer's own state does, and a checkpoint whose weights were replaced afterwards is
refused instead of resumed with masks that disagree with its weights.

A SIGKILL can still leave the newest ``checkpoint-N`` folder half written (weights, optimizer, no
trainer state yet). :func:`last_complete_checkpoint` skips such folders with a warning naming them;
``PruningTrainer.train(resume_from_checkpoint=True)`` uses it, and users of their own ``Trainer`` pass
its result to ``train``. :func:`publish_directory` writes a directory then renames it into place (one
file: :func:`hf_prune.files.write_atomic`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HfPruneError

RECORD_KEY = "hf_prune_checkpoint"
"""Key of the pruning record among a stateful callback's attributes in ``trainer_state.json``."""
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class IncompleteCheckpointError(HfPruneError, FileNotFoundError):
    """No checkpoint to resume from."""


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over ``model.state_dict()`` (names, dtypes, shapes and bytes): equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode_state(state: Mapping[str, Any]) -> str:
    """A pruning state (tensors included) as ASCII, to be stored in a JSON file."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_state(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_state` (tensors and plain types only)."""
    return torch.load(io.BytesIO(base64.b64decode(text)), map_location="cpu", weights_only=True)


def read_trainer_record(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pruning record stored in ``checkpoint/trainer_state.json``; ``None`` when the file is missing,
    unreadable (a write cut short) or holds no pruning record (a checkpoint of a run without pruning)."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
            trainer_state = json.load(f)
    except (OSError, ValueError):
        return None
    return find_record(trainer_state.get("stateful_callbacks") or {})


def find_record(stateful_callbacks: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pruning record among a Trainer state's ``stateful_callbacks``, if any."""
    for entries in stateful_callbacks.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            record = (entry or {}).get("attributes", {}).get(RECORD_KEY) if isinstance(entry, Mapping) else None
            if record is not None:
                return record
    return None


def checkpoint_problem(checkpoint: str | os.PathLike[str], world_size: int = 1) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    Complete: ``trainer_state.json`` (written last by the main process) parses and holds a pruning
    record, and with several processes every rank's RNG file (written by each rank, unordered with the
    main process) is a whole file.
    """
    if read_trainer_record(checkpoint) is None:
        state_file = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(state_file):
            return f"no {TRAINER_STATE_NAME} (the save was cut short)"
        return f"{TRAINER_STATE_NAME} is unreadable or holds no pruning state"
    if world_size > 1 and os.path.isfile(os.path.join(checkpoint, "rng_state_0.pth")):
        for rank in range(1, world_size):
            rng = os.path.join(checkpoint, f"rng_state_{rank}.pth")
            if not (os.path.isfile(rng) and zipfile.is_zipfile(rng)):
                return f"rng_state_{rank}.pth of process {rank} is missing or incomplete"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike[str], world_size: int = 1) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``; newer incomplete ones are named in a warning.

    ``None`` (with that warning) when every checkpoint is incomplete: a kill cut the first save short,
    and training starts again from the beginning. Raises :class:`IncompleteCheckpointError` when
    ``output_dir`` holds no checkpoint at all (as ``Trainer.train(resume_from_checkpoint=True)`` does).
    """
    folders = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                     if p.is_dir() and (m := _CHECKPOINT.match(p.name)))
    skipped = []
    for _, folder in reversed(folders):
        problem = checkpoint_problem(folder, world_size)
        if problem is None:
            if skipped:
                warnings.warn(f"resuming from {folder}: skipping incomplete checkpoint(s) {'; '.join(skipped)}",
                              stacklevel=2)
            return str(folder)
        skipped.append(f"{folder} ({problem})")
    if not skipped:
        raise IncompleteCheckpointError(f"no checkpoint to resume from in {output_dir}")
    warnings.warn(f"no complete checkpoint in {output_dir}, training starts from the beginning: skipping incomplete "
                  f"checkpoint(s) {'; '.join(skipped)}", stacklevel=2)
    return None


def publish_directory(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """``write(temporary directory)`` next to ``path``, then :func:`swap_in` it: readers see the old
    directory or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the published directory private
        write(tmp)
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def swap_in(new: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the finished directory ``new`` to ``path``, replacing what was there. A kill between the two
    renames leaves no ``path`` but the previous one as ``.<name>.old``, which :func:`published` returns."""
    path, previous = Path(path), _previous(Path(path))
    if path.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(path, previous)
    os.replace(new, path)
    shutil.rmtree(previous, ignore_errors=True)


def published(path: str | os.PathLike[str]) -> Path | None:
    """The last directory :func:`swap_in` completed at ``path`` (``path``, or its previous version when a
    kill came between the renames); ``None`` when there is none."""
    path = Path(path)
    for candidate in (path, _previous(path)):
        if candidate.is_dir():
            return candidate
    return None
