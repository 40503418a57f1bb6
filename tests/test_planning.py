"""Pure planning: kept counts on the rounded grid, small-group units, the latency table lookup."""

from __future__ import annotations

import pytest

from hf_prune.algorithm.latency import LayerTable, _monotone
from hf_prune.algorithm.planning import FlopsCost, fit_units, kept_count, kept_fractions, minimal_plan, relax_units
from hf_prune.graph.groups import PruningGroup


def _group(size, unit):
    return PruningGroup(id=0, space=0, size=size, members=[], prunable=True, reasons=[], flops=1.0, unit=unit)


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
