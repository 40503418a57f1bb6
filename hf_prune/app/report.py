"""The run report: ``report.json`` for machines, ``report.md`` and PNG plots for people."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algorithm.statistics import PruningStatistics
from ..files import write_atomic, write_text_atomic
from ..text import markdown_table


@dataclass
class RunReport:
    recipe: str
    model: str
    dense_metrics: dict[str, float] = field(default_factory=dict)
    pruned_metrics: dict[str, float] = field(default_factory=dict)
    statistics: PruningStatistics | None = None
    level_history: list[tuple[float, float]] = field(default_factory=list)  # (epoch, level)
    onnx: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "model": self.model, "seconds": self.seconds,
            "dense_metrics": self.dense_metrics, "pruned_metrics": self.pruned_metrics,
            "statistics": self.statistics.to_dict() if self.statistics else None,
            "level_history": [list(p) for p in self.level_history], "onnx": self.onnx, "artifacts": self.artifacts,
        }


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _latency_lines(s: PruningStatistics) -> list[str]:
    """Latency on the deployment target: dense (measured), predicted by the latency table, measured."""
    rows = [("predicted (latency table)", s.latency_predicted_ms), ("measured (stripped)", s.latency_measured_ms)]
    rows = [(k, v) for k, v in rows if v is not None]
    if not rows:
        return []
    dense = s.latency_dense_ms
    table = [("dense (measured)", f"{dense:.3f}", "100.0%")] if dense is not None else []
    table += [(k, f"{v:.3f}", f"{v / dense:.1%}" if dense else "–") for k, v in rows]
    return ["## Latency on the deployment target", "", markdown_table(["", "ms", "of dense"], table), ""]


def _markdown(r: RunReport, plots: dict[str, str]) -> str:
    lines = [f"# Pruning report: {r.model}", "", f"Recipe: `{r.recipe}` · wall time {r.seconds:.0f} s", ""]
    keys = sorted(set(r.dense_metrics) | set(r.pruned_metrics))
    if keys:
        table = [(k, _fmt(r.dense_metrics.get(k, "–")), _fmt(r.pruned_metrics.get(k, "–"))) for k in keys]
        lines += ["## Accuracy", "", markdown_table(["metric", "dense", "pruned"], table), ""]
    s = r.statistics
    if s is not None:
        table = [
            ("GFLOPs", f"{s.flops_before / 1e9:.4f}", f"{s.flops_after / 1e9:.4f}", f"{s.flops_after / s.flops_before - 1:+.1%}"),
            ("params (M)", f"{s.params_before / 1e6:.4f}", f"{s.params_after / 1e6:.4f}",
             f"{s.params_after / s.params_before - 1:+.1%}"),
        ] if s.flops_before else []
        table.append(("filters", s.filters_before, s.filters_after, f"{s.filters_after / max(s.filters_before, 1) - 1:+.1%}"))
        lines += ["## Size", "", markdown_table(["", "before", "after", "change"], table), ""]
        lines += _latency_lines(s)
    if r.onnx:
        table = [(k.removesuffix("_ms"), f"{r.onnx[k]:.2f}") for k in ("dense_ms", "pruned_ms") if k in r.onnx]
        if "speedup" in r.onnx:
            table.append(("speedup", f"{r.onnx['speedup']:.2f}×"))
        lines += ["## ONNX Runtime (CPU)", "", markdown_table(["", "latency (ms)"], table), ""]
    for title, name in plots.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if s is not None:
        table = [(layer.name, f"{layer.kept} / {layer.total}", f"{layer.level:.1%}") for layer in s.layers]
        lines += ["## Per-layer widths", "", markdown_table(["layer", "kept / total", "level"], table), ""]
    if r.artifacts:
        lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in r.artifacts.items()] + [""]
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG, whole or not at all, and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _plots(r: RunReport, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    if r.level_history:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([e for e, _ in r.level_history], [lv for _, lv in r.level_history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel("pruning level")
        ax.set_title("Pruning level over training")
        ax.grid(alpha=0.3)
        _save(fig, out / "pruning_level.png")
        made["Pruning level over training"] = "pruning_level.png"
    if r.statistics is not None and r.statistics.layers:
        layers = r.statistics.layers
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers)), 3.6))
        xs = range(len(layers))
        ax.bar(xs, [layer.total for layer in layers], color="#cccccc", label="before")
        ax.bar(xs, [layer.kept for layer in layers], color="#3b7dd8", label="after")
        ax.set_xticks(list(xs), [layer.name for layer in layers], rotation=90, fontsize=6)
        ax.set_ylabel("output channels")
        ax.set_title("Per-layer widths")
        ax.legend()
        _save(fig, out / "layer_widths.png")
        made["Per-layer widths before and after"] = "layer_widths.png"
    return made


def write_report(report: RunReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, out)
    write_text_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2, default=str))
    write_text_atomic(out / "report.md", _markdown(report, plots))
    return {"json": out / "report.json", "markdown": out / "report.md", **{n: out / n for n in plots.values()}}
