"""Kept-channel plans: how many channels each pruning group keeps for a level or a cost target.

Pure functions over :class:`~hf_prune.graph.groups.PruningGroup` s and importance scores; the
controller turns a plan (group id → kept channels) into masks. Cost targets (FLOPs, latency) search
the global level by bisection on the rounded grid, then give channels back so the target holds
with as little overshoot as the rounding allows (NNCF's choice of filters); a latency target with
``all_weights`` instead removes channels where the latency table says they save most for the
importance they lose (HALP-style, :func:`plan_by_benefit`).
"""

from __future__ import annotations

import heapq
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


def comparable_importance(scores: Mapping[int, torch.Tensor],
                          ranking: RankingCoefficients | None = None) -> dict[int, torch.Tensor]:
    """Importance comparable across groups: normalized within each group (NNCF's global ranking) and
    transformed by the learned coefficients, if any."""
    ranked = {gid: s / (s.mean() + 1e-12) for gid, s in scores.items()}
    if ranking is not None:
        ranked = {gid: ranking.transform(gid, v) for gid, v in ranked.items()}
    return ranked


def plan_for_level(groups: Mapping[int, PruningGroup], level: float, scores: Mapping[int, torch.Tensor],
                   ranking: RankingCoefficients | None = None, all_weights: bool = False,
                   max_level: float = MAX_GLOBAL_GROUP_LEVEL) -> Plan:
    """Kept channels per group for a global filter level: the same level in every group, or one
    threshold over importance ranked globally (``all_weights`` or learned ``ranking``)."""
    if level == 0 or (ranking is None and not all_weights):
        return {gid: kept_count(g, level) for gid, g in groups.items()}
    # Global ranking: one threshold over comparable importance; a group is never pruned beyond the
    # cap, so none is emptied.
    ranked = comparable_importance(scores, ranking)
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
    _check_reachable(target, reduction(best), cost, key)
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


def plan_by_benefit(groups: Mapping[int, PruningGroup], target: float, cost: CostModel,
                    scores: Mapping[int, torch.Tensor], key: str, max_level: float = MAX_GLOBAL_GROUP_LEVEL) -> Plan:
    """The plan that reaches a ``target`` cost reduction by removing channels where they pay most
    (HALP's latency-aware allocation, greedily): a step at a time (one unit of one group), the step that
    loses the least :func:`comparable_importance` per unit of cost it saves, with each group's saving
    read from the cost model (e.g. the latency table: a channel of a slow layer saves more than one of a
    fast layer). A group keeps at least ``1 - max_level`` of its channels while the target can be met
    otherwise, and never fewer than its rounding allows (:func:`minimal_plan`); steps the target does
    not need are given back at the end.
    """
    full = {gid: g.size for gid, g in groups.items()}
    if target == 0:
        return full
    floor = minimal_plan(groups)
    _check_reachable(target, 1.0 - cost.cost(kept_fractions(groups, floor)) / cost.dense, cost, key)
    budget = (1.0 - target) * cost.dense
    least_first = {gid: [0.0, *torch.sort(v.float()).values.cumsum(0).tolist()]
                   for gid, v in comparable_importance(scores).items()}
    plan = dict(full)
    tracker = cost.tracker(kept_fractions(groups, plan))

    def next_kept(gid: int) -> int:
        g, k = groups[gid], plan[gid]
        return (k - 1) // g.unit * g.unit if g.unit > 1 and g.size > g.unit else k - 1

    def price(gid: int) -> float:
        """Importance lost per unit of cost saved by the group's next step."""
        g, k, nk = groups[gid], plan[gid], next_kept(gid)
        saved = tracker.total - tracker.total_if(g.space, nk / g.size)
        lost = least_first[gid][g.size - nk] - least_first[gid][g.size - k]
        return lost / saved if saved > 0 else math.inf

    capped = {gid: max(floor[gid], kept_count(g, max_level)) for gid, g in groups.items()}
    for limit in (capped, floor):
        heap = [(price(gid), gid) for gid in groups if next_kept(gid) >= limit[gid]]
        heapq.heapify(heap)
        while heap and tracker.total > budget:
            _, gid = heapq.heappop(heap)
            current = price(gid)  # steps of neighbouring groups change what this one saves
            if current == math.inf:
                continue
            if heap and current > heap[0][0]:
                heapq.heappush(heap, (current, gid))
                continue
            plan[gid] = next_kept(gid)
            tracker.set(groups[gid].space, plan[gid] / groups[gid].size)
            if next_kept(gid) >= limit[gid]:
                heapq.heappush(heap, (price(gid), gid))
    # The last step may overshoot the target: give steps back, the most important channels first.
    def back(gid: int) -> int:
        g = groups[gid]
        return min(g.size, plan[gid] + g.unit) if g.unit > 1 and g.size > g.unit else plan[gid] + 1

    def regained(gid: int) -> float:
        g = groups[gid]
        return least_first[gid][g.size - plan[gid]] - least_first[gid][g.size - back(gid)]

    for gid in sorted((gid for gid, g in groups.items() if plan[gid] < g.size), key=regained, reverse=True):
        g = groups[gid]
        while plan[gid] < g.size and tracker.total_if(g.space, back(gid) / g.size) <= budget:
            plan[gid] = back(gid)
            tracker.set(g.space, plan[gid] / g.size)
    return plan


def _check_reachable(target: float, most: float, cost: CostModel, key: str) -> None:
    if most < target:
        raise PruningLevelError(
            f"{key}: removing {target:.3f} of the model's {cost.name} is unreachable: the most this model can "
            f"be pruned removes {most:.3f} (see maximal_compression_rate)")


class PlanAt(Protocol):
    def __call__(self, level: float) -> Plan: ...


def minimal_plan(groups: Mapping[int, PruningGroup]) -> Plan:
    """Each group pruned as far as its rounding allows (what ``maximal_compression_rate`` measures)."""
    return {gid: kept_count(g, 1.0 - 1e-9) for gid, g in groups.items()}


def relax_units(groups: list[PruningGroup], cost: CostModel, target: float, floor: int = MIN_AUTO_UNIT) -> None:
    """Halve the units (down to ``floor``) while the rounding grid makes ``target`` unreachable:
    ``channel_multiple: auto`` rounds for speed, never at the price of the target."""
    by_id = {g.id: g for g in groups}
    while by_id and 1.0 - cost.cost(kept_fractions(by_id, minimal_plan(by_id))) / cost.dense < target:
        coarse = [g for g in groups if g.unit > floor and g.unit % 2 == 0]
        if not coarse:
            return
        for g in coarse:
            g.unit //= 2
