"""Pure planning: kept counts on the rounded grid, small-group units, the latency table lookup."""

from __future__ import annotations

import pytest
import torch

from hf_prune.algorithm.latency import LayerTable, _monotone
from hf_prune.algorithm.planning import (
    FlopsCost, fit_units, kept_count, kept_fractions, minimal_plan, plan_by_benefit, relax_units,
)
from hf_prune.errors import PruningLevelError
from hf_prune.graph.groups import PruningGroup


def _group(size, unit, gid=0):
    return PruningGroup(id=gid, space=gid, size=size, members=[], prunable=True, reasons=[], flops=1.0, unit=unit)


class _LinearCost:
    """A cost model (planning.CostModel) linear in each group's kept fraction; its own tracker."""

    name = "cost"

    def __init__(self, per_space):
        self.per_space, self.dense, self.kept = per_space, sum(per_space.values()), {}
        self.total = self.dense

    def cost(self, kept):
        return sum(c * kept.get(space, 1.0) for space, c in self.per_space.items())

    def tracker(self, kept):
        self.kept = dict(kept)
        self.total = self.cost(self.kept)
        return self

    def total_if(self, space, fraction):
        return self.cost({**self.kept, space: fraction})

    def set(self, space, fraction):
        self.kept[space] = fraction
        self.total = self.cost(self.kept)


def test_kept_count_rounds_up_to_the_unit_where_the_group_is_larger():
    assert kept_count(_group(256, 64), 0.5) == 128
    assert kept_count(_group(256, 64), 0.6) == 128  # 103 kept -> rounded up to 128
    assert kept_count(_group(64, 64), 0.6) == 26  # not larger than its unit: not rounded
    assert kept_count(_group(10, 1), 0.99) == 1  # never empty


def test_fit_units_halves_units_of_small_groups_down_to_the_floor():
    groups = [_group(64, 64), _group(32, 64), _group(16, 64), _group(256, 64), _group(24, 3)]
    fit_units(groups)
    assert [g.unit for g in groups] == [32, 16, 8, 64, 3]
    assert kept_count(groups[0], 0.6) == 32


def test_layer_table_interpolates_between_measured_widths():
    t = LayerTable(out_widths=[32, 64], in_widths=[16, 32], ms=[[1.0, 2.0], [3.0, 4.0]])
    assert t.lookup(64, 32) == 4.0 and t.lookup(32, 16) == 1.0
    assert t.lookup(48, 24) == pytest.approx(2.5)
    assert t.lookup(100, 8) == 3.0  # clamped to the measured range
    assert LayerTable([8], [4], [[0.5]]).lookup(3, 2) == 0.5


def test_monotone_tables_never_make_a_narrower_layer_slower():
    disturbed = [[1.0, 50.0, 3.0], [2.0, 3.0, 4.0]]  # a busy machine delayed one measurement
    assert _monotone(disturbed) == [[1.0, 3.0, 3.0], [2.0, 3.0, 4.0]]


def test_relax_units_makes_a_flops_target_reachable_on_a_coarse_grid():
    """ResNet-18 (NNCF's default groups) at multiple 64, what `auto` picks for bf16 on CUDA, can lose at most
    40% of its FLOPs; relaxing the units makes a 0.5 FLOPs target reachable again."""
    import timm
    import torch

    import hf_prune
    from hf_prune.graph.groups import PruningPolicy

    analysis = hf_prune.analyze_model(timm.create_model("resnet18"), torch.randn(1, 3, 64, 64),
                                      PruningPolicy(channel_multiple=64))
    groups = analysis.prunable_groups
    fit_units(groups)
    cost = FlopsCost(analysis.flops_model)

    def reachable() -> float:
        by_id = {g.id: g for g in groups}
        return 1 - cost.cost(kept_fractions(by_id, minimal_plan(by_id))) / cost.dense

    assert reachable() < 0.5
    relax_units(groups, cost, 0.5)
    assert reachable() >= 0.5
    assert all(g.unit >= 8 for g in groups) and max(g.unit for g in groups) < 64


def test_plan_by_benefit_prunes_the_group_that_saves_most_and_caps_it_until_needed():
    groups = {0: _group(100, 1, gid=0), 1: _group(100, 1, gid=1)}
    cost = _LinearCost({0: 90.0, 1: 10.0})  # a channel of group 0 saves 9x as much as one of group 1
    scores = {0: torch.ones(100), 1: torch.ones(100)}  # and costs as much importance

    def plan(target):
        p = plan_by_benefit(groups, target, cost, scores, "pruning_latency_target")
        assert cost.cost(kept_fractions(groups, p)) <= (1 - target) * cost.dense + 1e-9
        return p

    assert plan(0.5) == {0: 44, 1: 100}  # 0.9 * 44 + 10 <= 50; 45 would not fit
    assert plan(0.85) == {0: 10, 1: 60}  # group 0 stops at the 90% cap, group 1 pays the rest
    beyond = plan(0.95)
    assert beyond[0] < 10 and beyond[1] >= 10  # past the cap only because the target needs it
    with pytest.raises(PruningLevelError, match="pruning_latency_target: removing 0.999 .* unreachable"):
        plan(0.999)
