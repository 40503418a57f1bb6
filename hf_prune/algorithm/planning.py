"""Kept-channel plans: how many channels each pruning group keeps for a level or a cost target.

Pure functions over :class:`~hf_prune.graph.groups.PruningGroup` s and importance scores; the
controller turns a plan (group id → kept channels) into masks. Cost targets (FLOPs, latency) search
the global level by bisection on the rounded grid, then give channels back so the target holds
with as little overshoot as the rounding allows.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol

import torch

from ..errors import PruningLevelError
from ..graph.flops import FlopsModel
from ..graph.groups import PruningGroup
from .ranking import RankingCoefficients

Plan = dict[int, int]
"""Group id → channels the group keeps."""
MAX_GLOBAL_GROUP_LEVEL = 0.9  # with all_weights, a group keeps at least 10% of its channels
MIN_AUTO_UNIT = 8
"""With ``channel_multiple: auto``, a group too small for the device's multiple rounds to the largest
power-of-two fraction of it that is at least this (e.g. a 64-channel group to 32 under multiple 64)."""


class CostTracker(Protocol):
    """A model's cost under changing kept fractions (see :class:`~hf_prune.graph.flops.FlopsTracker`)."""

    total: float

    def total_if(self, leaf: int, fraction: float) -> float: ...

    def set(self, leaf: int, fraction: float) -> None: ...


class CostModel(Protocol):
    """A cost (FLOPs, latency) of the model as a function of the kept fraction of each leaf space."""

    name: str
    dense: float

    def cost(self, kept: Mapping[int, float]) -> float: ...

    def tracker(self, kept: Mapping[int, float]) -> CostTracker: ...


class FlopsCost:
    """The FLOPs model as a :class:`CostModel`."""

    name = "FLOPs"

    def __init__(self, flops_model: FlopsModel) -> None:
        self._model = flops_model
        self.dense = flops_model.dense_flops

    def cost(self, kept: Mapping[int, float]) -> float:
        return self._model.flops(dict(kept))

    def tracker(self, kept: Mapping[int, float]) -> CostTracker:
        return self._model.tracker(dict(kept))


def kept_count(group: PruningGroup, level: float) -> int:
    """Channels a group keeps at ``level``: rounded up to its unit where the group is large enough."""
    n = group.size
    keep = max(1, n - math.floor(n * level + 1e-9))
    unit = group.unit
    if unit > 1 and n > unit:
        keep = min(n, math.ceil(keep / unit) * unit)
    return keep


def fit_units(groups: list[PruningGroup], floor: int = MIN_AUTO_UNIT) -> None:
    """Halve the unit of each group no larger than its unit (down to ``floor``), so that small groups
    are still rounded to a hardware-friendly multiple instead of not at all."""
    for g in groups:
        while g.unit > floor and g.unit % 2 == 0 and g.size <= g.unit:
            g.unit //= 2


def kept_fractions(groups: Mapping[int, PruningGroup], plan: Plan) -> dict[int, float]:
    """Leaf space → kept fraction, the form cost models take."""
    return {groups[gid].space: k / groups[gid].size for gid, k in plan.items()}


def plan_for_level(groups: Mapping[int, PruningGroup], level: float, scores: Mapping[int, torch.Tensor],
                   ranking: RankingCoefficients | None = None, all_weights: bool = False,
                   max_level: float = MAX_GLOBAL_GROUP_LEVEL) -> Plan:
    """Kept channels per group for a global filter level: the same level in every group, or one
    threshold over importance ranked globally (``all_weights`` or learned ``ranking``)."""
    if level == 0 or (ranking is None and not all_weights):
        return {gid: kept_count(g, level) for gid, g in groups.items()}
    # Global ranking: one threshold over importance normalized within each group (and transformed
    # by the learned coefficients); a group is never pruned beyond the cap, so none is emptied.
    ranked = {gid: s / (s.mean() + 1e-12) for gid, s in scores.items()}
    if ranking is not None:
        ranked = {gid: ranking.transform(gid, v) for gid, v in ranked.items()}
    everything = torch.cat([ranked[gid] for gid in groups])
    n_pruned = math.floor(level * everything.numel() + 1e-9)
    if n_pruned == 0:
        return {gid: g.size for gid, g in groups.items()}
    threshold = torch.kthvalue(everything, n_pruned).values
    return {
        gid: kept_count(g, min(int((ranked[gid] <= threshold).sum()) / g.size, max_level))
        for gid, g in groups.items()
    }


def plan_for_cost(groups: Mapping[int, PruningGroup], target: float, cost: CostModel,
                  plan_at: "PlanAt", key: str) -> Plan:
    """The plan of the smallest level whose cost reduction reaches ``target`` (bisection over the
    level on the rounded grid, then channels given back while the target still holds).

    ``plan_at(level)`` gives the plan at a level (:func:`plan_for_level` with the controller's
    options); ``key`` names the config key in the error when the target is unreachable.
    """
    def reduction(plan: Plan) -> float:
        return 1.0 - cost.cost(kept_fractions(groups, plan)) / cost.dense

    if target == 0:
        return plan_at(0.0)
    hi = 1.0 - 1e-9
    best = plan_at(hi)
    if reduction(best) < target:
        raise PruningLevelError(
            f"{key}: removing {target:.3f} of the model's {cost.name} is unreachable: the most this model can "
            f"be pruned removes {reduction(best):.3f} (see maximal_compression_rate)")
    lo = 0.0
    for _ in range(30):
        mid = (lo + hi) / 2
        plan = plan_at(mid)
        if reduction(plan) >= target:
            hi, best = mid, plan
        else:
            lo = mid
    # Rounding makes the reduction jump in steps: give channels back, finest steps first, while
    # the target still holds, so the reduction lands just above it rather than a step beyond.
    budget = (1.0 - target) * cost.dense
    tracker = cost.tracker(kept_fractions(groups, best))
    for gid in sorted(best, key=lambda g: groups[g].flops / groups[g].size):
        g = groups[gid]
        step = g.unit if g.size > g.unit else 1
        while best[gid] + step <= g.size and tracker.total_if(g.space, (best[gid] + step) / g.size) <= budget:
            best[gid] += step
            tracker.set(g.space, best[gid] / g.size)
    return best


class PlanAt(Protocol):
    def __call__(self, level: float) -> Plan: ...


def minimal_plan(groups: Mapping[int, PruningGroup]) -> Plan:
    """Each group pruned as far as its rounding allows (what ``maximal_compression_rate`` measures)."""
    return {gid: kept_count(g, 1.0 - 1e-9) for gid, g in groups.items()}
