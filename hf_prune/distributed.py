"""``torch.distributed`` helpers every wing may use: who is the main process, share its value, average a tensor.

Each is a no-op (or the identity) outside a process group of more than one process.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "broadcast_from_main", "is_distributed", "is_main_process"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of a distributed job, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def broadcast_from_main(obj: T) -> T:
    """The main process's ``obj`` on every process (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Replace ``tensor`` in place by its mean over all processes; returns it."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor
