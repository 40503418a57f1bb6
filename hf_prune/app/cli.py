"""The ``hf-prune`` command line.

Each subcommand is one ``_add_<name>`` function that registers its parser and sets ``run`` to a
``(args) -> exit code`` handler. Errors hf_prune raises on purpose (every one an ``HfPruneError``:
invalid configs and recipes, missing files, ...) print ``error: <message>`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..algorithm.controller import pruning_policy
from ..config import PruningConfig
from ..errors import HfPruneError
from ..graph.analysis import ModelAnalysis, analyze_model
from ..graph.groups import PruningGroup

__all__ = ["build_parser", "main"]

REASONS_WIDTH = 160
"""Characters of joined reasons shown per table row before the rest is summarised as ``(+N more)``."""
EXTRAS = {"datasets": "data", "sklearn": "data", "matplotlib": "data", "onnx": "onnx", "onnxruntime": "onnx",
          "onnxscript": "onnx"}
"""Optional packages a command may need, and the extra (pyproject.toml) that installs each."""
PIPE_WIDTH = 200
"""Console width when stdout is not a terminal (rich would use 80 and wrap the reasons)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-prune`` parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="hf-prune", description="NNCF-style filter pruning for timm and Hugging Face vision models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_analyze(commands)
    _add_train(commands)
    _add_export(commands)
    _add_stats(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-prune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except HfPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"error: hf-prune {args.command} needs {exc.name}, which is not installed: "
              f"pip install 'hf_prune[{extra}]'", file=sys.stderr)
        return 2


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """Arguments naming a model (see :func:`hf_prune.app.models.load_model`)."""
    parser.add_argument("model", metavar="MODEL",
                        help="timm name (timm/NAME, timm:NAME or NAME), local timm/transformers directory, "
                             "or Hub id (hf:ID or ORG/NAME)")
    parser.add_argument("--image-size", type=int, metavar="N", help="input height and width (default: model's)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="replace the classifier head")
    parser.add_argument("--pretrained", action="store_true", help="load pretrained timm / Hub weights")


def _add_train(commands: argparse._SubParsersAction) -> None:
    """Register ``train RECIPE``."""
    parser = commands.add_parser(
        "train", help="run a recipe: prune while fine-tuning, strip, save, export, report",
        description="Run RECIPE end to end: optional dense warm-up, pruning on the schedule with fine-tuning, "
                    "strip, save_pretrained, ONNX export and a report (report.md, report.json, plots).")
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set training.num_train_epochs=3 (repeatable)")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    """Run the recipe; print where the products are."""
    from .run import run_recipe

    result = run_recipe(args.recipe, args.overrides)
    if result.files:
        console = Console(width=PIPE_WIDTH if not sys.stdout.isatty() else None)
        table = Table(title=f"hf-prune train: {args.recipe}")
        table.add_column("product")
        table.add_column("path")
        for name, path in result.files.items():
            table.add_row(name, escape(str(path)))
        console.print(table)
        for line in (result.report.statistics.summary_lines() if result.report.statistics else []):
            console.print(escape(line), highlight=False)
    return 0


def _add_analyze(commands: argparse._SubParsersAction) -> None:
    """Register ``analyze MODEL``."""
    parser = commands.add_parser("analyze", help="show a model's pruning groups and why layers are not prunable",
                                 description="Trace MODEL once and show its pruning groups, their FLOPs share, "
                                             "and the reason every unprunable layer is excluded.")
    _add_model_args(parser)
    parser.add_argument("--config", metavar="FILE", help="pruning config (YAML or JSON) whose structural options "
                                                         "and scopes apply")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip proving each group strippable on the example inputs")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON, nothing else")
    parser.add_argument("--all", action="store_true", help="also list unprunable groups")
    parser.set_defaults(run=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    """Load the model, analyse it, print a report (or JSON)."""
    from .models import load_model  # each command imports what it needs (timm, transformers) when it runs

    model, inputs = load_model(args.model, num_classes=args.num_classes, pretrained=args.pretrained,
                               image_size=args.image_size)
    policy = pruning_policy(model, PruningConfig.from_file(args.config)) if args.config else None
    start = time.perf_counter()
    analysis = analyze_model(model, inputs, policy=policy, verify=args.verify)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps(analysis.to_dict() | {"analysis_seconds": seconds}, indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    console.print(_summary(analysis, args.model, seconds))
    groups = analysis.groups if args.all else analysis.prunable_groups
    console.print(_groups_table(groups, analysis.dense_flops, show_reasons=args.all))
    if analysis.unprunable_layers:
        console.print(_layers_table(analysis.unprunable_layers))
    return 0


def _summary(analysis: ModelAnalysis, spec: str, seconds: float) -> Table:
    """Model, size, group counts and analysis time, one per line."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "Model": f"{escape(spec)} ({analysis.model_class})",
        "FLOPs": f"{analysis.dense_flops / 1e9:.3f} GFLOPs",
        "Params": f"{analysis.dense_params / 1e6:.2f} M",
        "Groups": f"{len(analysis.groups)} ({len(analysis.prunable_groups)} prunable)",
        "Analysis": f"{seconds:.2f} s",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _groups_table(groups: list[PruningGroup], dense_flops: float, show_reasons: bool) -> Table:
    """One row per group; its FLOPs share is what removing the whole group would save."""
    table = Table(title="Pruning groups" if show_reasons else "Prunable groups", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("producers")
    table.add_column("consumers", justify="right")
    table.add_column("FLOPs share", justify="right")
    if show_reasons:
        table.add_column("not prunable because")
    for g in groups:
        producers = ", ".join(g.producers[:3]) + (f" +{len(g.producers) - 3} more" if len(g.producers) > 3 else "")
        row = [str(g.id), str(g.size), escape(producers), str(len(g.consumers)),
               f"{g.flops / (dense_flops or 1.0):.1%}"]
        if show_reasons:
            row.append(escape(_join_reasons(g.reasons)))
        table.add_row(*row)
    return table


def _layers_table(layers: dict[str, list[str]]) -> Table:
    """Every layer none of whose output channels can be pruned, with the reasons."""
    table = Table(title="Unprunable layers", title_justify="left")
    table.add_column("layer")
    table.add_column("reasons")
    for name, reasons in layers.items():
        table.add_row(escape(name), escape(_join_reasons(reasons)))
    return table


def _join_reasons(reasons: list[str], width: int = REASONS_WIDTH) -> str:
    """Reasons joined with ``"; "``; whole reasons beyond ``width`` characters become ``… (+N more)``."""
    text = "; ".join(reasons)
    if len(text) <= width:
        return text
    kept = 1
    while len("; ".join(reasons[:kept + 1])) <= width:
        kept += 1
    shown = "; ".join(reasons[:kept])[:width]
    rest = len(reasons) - kept
    return f"{shown}… (+{rest} more)" if rest else f"{shown}…"


def _add_export(commands: argparse._SubParsersAction) -> None:
    """Register ``export DIR --onnx OUT``."""
    parser = commands.add_parser("export", help="export a saved (pruned) model to ONNX",
                                 description="Export the model saved in DIR through Optimum's ONNX exporter and "
                                             "check ONNX Runtime's outputs against PyTorch's.")
    parser.add_argument("directory", metavar="DIR", help="a directory saved by hf_prune, transformers or timm")
    parser.add_argument("--onnx", required=True, metavar="OUT", help="output directory (receives model.onnx)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: Optimum's for the model)")
    parser.add_argument("--fixed-image-size", action="store_true",
                        help="export for the model's own image size, only the batch dynamic (through torch.onnx: "
                             "seconds where a dynamic height and width take minutes, e.g. DaViT)")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..integrations.onnx import export_onnx

    path = export_onnx(args.directory, args.onnx, opset=args.opset, dynamic_image_size=not args.fixed_image_size)
    print(f"wrote {path} (ONNX Runtime outputs match PyTorch)")
    return 0


def _add_stats(commands: argparse._SubParsersAction) -> None:
    """Register ``stats DIR``."""
    parser = commands.add_parser("stats", help="show FLOPs, parameters and widths of a saved (pruned) model",
                                 description="Load the model saved in DIR and compare it with the dense model its "
                                             "config describes: FLOPs, parameters, output channels per stage.")
    parser.add_argument("directory", metavar="DIR", help="a directory saved by hf_prune, transformers or timm")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON, nothing else")
    parser.set_defaults(run=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from ..integrations.hub import model_statistics
    from ..integrations.serialization import from_pretrained

    stats = model_statistics(from_pretrained(args.directory))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    console.print(_size_table(stats, args.directory))
    console.print(_stages_table(stats["stages"]))
    return 0


def _change(stats: dict, key: str, unit: float, suffix: str) -> str:
    """``"<before> → <after> (<relative change>)"`` of a dense/pruned pair in ``stats``."""
    before, after = stats[key]["before"], stats[key]["after"]
    return f"{before / unit:.3f} {suffix} → {after / unit:.3f} {suffix} ({after / before - 1:+.1%})"


def _size_table(stats: dict, directory: str) -> Table:
    """Model, FLOPs and parameters, dense → pruned, and the recorded pruning level if any."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    size = "×".join(map(str, stats["input_size"]))
    table.add_row("Model", f"{escape(directory)} ({stats['model_class']}, {stats['library']})")
    table.add_row("FLOPs", f"{_change(stats, 'flops', 1e9, 'G')} at {size}")
    table.add_row("Params", _change(stats, "params", 1e6, "M"))
    recorded = stats["pruning_statistics"]
    if recorded:
        kind = "FLOPs" if recorded["prune_flops"] else "filters"
        table.add_row("Pruning", f"level {recorded['current_level']:.3f} (target {recorded['target_level']:.3f} "
                                 f"of {kind})")
    return table


def _stages_table(stages: list[dict]) -> Table:
    """Output channels of the conv and linear layers of each stage, dense and pruned."""
    table = Table(title="Width per stage (conv + linear output channels)", title_justify="left")
    table.add_column("stage")
    for column in ("dense", "pruned", "kept"):
        table.add_column(column, justify="right")
    for s in stages:
        table.add_row(escape(s["stage"]), str(s["before"]), str(s["after"]), f"{s['after'] / s['before']:.0%}")
    return table


if __name__ == "__main__":
    raise SystemExit(main())
