"""Filter importance: per-filter norms of each producer, aggregated over a pruning group.

Criteria follow NNCF: ``L1`` and ``L2`` norms of each filter, and ``geometric_median`` (the sum of a
filter's distances to the other filters of its layer: filters close to the median are redundant).
Group importance is the sum over the group's producers; a filter that spans several rows of a producer
(an attention head spans head_dim rows of q, k and v) is measured over all of them.
"""

from __future__ import annotations

from typing import Callable

import torch

ImportanceFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps filters (n, k) to n importance scores."""


def _l1(filters: torch.Tensor) -> torch.Tensor:
    return filters.abs().sum(dim=1)


def _l2(filters: torch.Tensor) -> torch.Tensor:
    return filters.norm(dim=1)


def _geometric_median(filters: torch.Tensor) -> torch.Tensor:
    return torch.cdist(filters, filters).sum(dim=1)


IMPORTANCE: dict[str, ImportanceFn] = {"L1": _l1, "L2": _l2, "geometric_median": _geometric_median}
"""The criteria ``params.filter_importance`` may name."""


def filters_by_index(weight: torch.Tensor, dim: int, coords: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of ``weight`` along ``dim`` gathered per group index: a (size, k) matrix.

    ``coords[i]`` is the group index of position ``i`` along ``dim`` (-1 where it has none).
    """
    # float64: scores then agree across devices and kernels far below any real difference between filters
    w = weight.detach().double().movedim(dim, 0).reshape(weight.shape[dim], -1)
    coords = coords.to(w.device)
    present = coords >= 0
    rows, idx = w[present], coords[present]
    order = torch.argsort(idx, stable=True)
    return rows[order].reshape(size, -1)


def group_importance(producers: list[tuple[torch.Tensor, int, torch.Tensor]], size: int, criterion: str) -> torch.Tensor:
    """Importance of each index of a group from its producers ``(weight, dim, coords)``, computed on the
    weights' device and returned on the CPU (one transfer per group)."""
    fn = IMPORTANCE[criterion]
    total = None
    for weight, dim, coords in producers:
        score = fn(filters_by_index(weight, dim, coords, size))
        total = score if total is None else total + score.to(total.device)
    return total.cpu() if total is not None else torch.zeros(size, dtype=torch.float64)
