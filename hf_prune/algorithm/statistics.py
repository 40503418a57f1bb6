"""PruningStatistics: what the controller has done, for machines (``to_dict``) and people (a table).

It also has NNCF's shape: ``stats.filter_pruning.model_statistics`` with ``full_flops``, ``current_flops``,
``full_params_num``, ``full_filters_num`` (all conv/linear filters, as NNCF counts them), their pruning
levels and ``pruned_layers_summary``; ``to_str()``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from torch import nn
from rich.table import Table

if TYPE_CHECKING:
    from .controller import FilterPruningController


@dataclass
class LayerStatistics:
    name: str
    weight_shape: tuple[int, ...]
    mask_shape: tuple[int, ...]
    kept: int
    total: int
    group_id: int

    @property
    def level(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    filter_pruning_level = level
    """NNCF's name (``PrunedLayerSummary.filter_pruning_level``)."""


@dataclass
class PruningStatistics:
    current_level: float
    target_level: float
    prune_flops: bool
    compression_rate: float
    compression_stage: int
    filters_before: int
    filters_after: int
    flops_before: float | None = None
    flops_after: float | None = None
    params_before: float | None = None
    params_after: float | None = None
    layers: list[LayerStatistics] = field(default_factory=list)
    prune_latency: bool = False
    latency_dense_ms: float | None = None  # measured on the deployment target (latency targets)
    latency_predicted_ms: float | None = None  # the current masks, from the latency table
    latency_measured_ms: float | None = None  # the stripped model, where controller.measure_latency ran

    # NNCF's names: stats.filter_pruning.model_statistics.full_flops, ... (None where not collected)
    @property
    def filter_pruning(self) -> PruningStatistics:
        return self

    @property
    def model_statistics(self) -> PruningStatistics:
        return self

    @property
    def current_pruning_level(self) -> float:
        return self.current_level

    @property
    def target_pruning_level(self) -> float:
        return self.target_level

    @property
    def full_flops(self) -> float | None:
        return self.flops_before

    @property
    def current_flops(self) -> float | None:
        return self.flops_after

    @property
    def flops_pruning_level(self) -> float | None:
        return None if self.flops_before is None else 1 - self.flops_after / self.flops_before

    @property
    def full_params_num(self) -> float | None:
        return self.params_before

    @property
    def current_params_num(self) -> float | None:
        return self.params_after

    @property
    def params_pruning_level(self) -> float | None:
        return None if self.params_before is None else 1 - self.params_after / self.params_before

    @property
    def full_filters_num(self) -> int:
        return self.filters_before

    @property
    def current_filters_num(self) -> int:
        return self.filters_after

    @property
    def filter_pruning_level(self) -> float:
        return 1 - self.filters_after / self.filters_before if self.filters_before else 0.0

    @property
    def pruned_layers_summary(self) -> list[LayerStatistics]:
        return self.layers

    def to_str(self) -> str:
        """NNCF's name for ``str(stats)``."""
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [dict(asdict(layer), level=layer.level) for layer in self.layers]
        return d

    def table(self) -> Table:
        t = Table(title="Pruned layers", show_lines=False)
        for col in ("layer", "group", "weight shape", "kept / total", "level"):
            t.add_column(col, justify="left" if col in ("layer", "weight shape") else "right")
        for layer in self.layers:
            t.add_row(layer.name, str(layer.group_id), str(list(layer.weight_shape)),
                      f"{layer.kept} / {layer.total}", f"{layer.level:.1%}")
        return t

    def summary_lines(self) -> list[str]:
        target_kind = "FLOPs" if self.prune_flops else "latency" if self.prune_latency else "filters"
        lines = [
            f"pruning level: {self.current_level:.3f} (target {self.target_level:.3f} of {target_kind})",
            f"compression rate: {self.compression_rate:.3f}, stage {self.compression_stage}",
            f"filters (all conv/linear layers): {self.filters_before} -> {self.filters_after}",
        ]
        if self.flops_before is not None:
            lines.append(f"FLOPs: {self.flops_before / 1e6:.1f}M -> {self.flops_after / 1e6:.1f}M "
                         f"({1 - self.flops_after / self.flops_before:.1%} less)")
            lines.append(f"params: {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M "
                         f"({1 - self.params_after / self.params_before:.1%} less)")
        if self.latency_dense_ms is not None:
            lines.append(f"latency: {self.latency_dense_ms:.3f} ms -> {self.latency_predicted_ms:.3f} ms predicted "
                         f"({self.latency_predicted_ms / self.latency_dense_ms:.1%} of dense)")
        if self.latency_measured_ms is not None:
            dense = f" ({self.latency_measured_ms / self.latency_dense_ms:.1%} of dense)" if self.latency_dense_ms else ""
            lines.append(f"latency measured: {self.latency_measured_ms:.3f} ms{dense}")
        return lines

    def __str__(self) -> str:
        buf = io.StringIO()
        console = Console(file=buf, width=120, force_terminal=False, color_system=None)
        for line in self.summary_lines():
            console.print(line, highlight=False)
        console.print(self.table())
        return buf.getvalue()


def collect_statistics(ctrl: "FilterPruningController", quickly_collected_only: bool = False) -> PruningStatistics:
    shapes = ctrl.analysis.trace.param_shapes
    layers = []
    for info in ctrl.pruned_modules:
        mask = info.mask
        layers.append(LayerStatistics(info.module_name, shapes[info.param], tuple(mask.shape),
                                      int(mask.sum()), mask.numel(), info.group_id))
    filters = sum(m.weight.shape[1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0]
                  for m in ctrl.model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
    stats = PruningStatistics(
        current_level=ctrl.pruning_level, target_level=ctrl.target_level, prune_flops=ctrl.prune_flops,
        compression_rate=ctrl.compression_rate, compression_stage=ctrl.compression_stage(),
        filters_before=filters, filters_after=filters - sum(layer.total - layer.kept for layer in layers),
        layers=layers, prune_latency=ctrl.prune_latency, latency_measured_ms=ctrl.measured_latency_ms,
    )
    if ctrl.latency is not None:
        stats.latency_dense_ms, stats.latency_predicted_ms = ctrl.latency.dense, ctrl.predicted_latency_ms
    if not quickly_collected_only:
        stats.flops_before, stats.flops_after = ctrl.analysis.dense_flops, ctrl.current_flops
        stats.params_before, stats.params_after = ctrl.analysis.dense_params, ctrl.current_params
    return stats
