"""Shared helpers of the benchmark scripts: timing, command-line options and result files."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
for path in (ROOT, ROOT / "tests"):  # scripts run as `python bench/<script>.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from conftest import randomize_norms  # noqa: E402,F401  (the tests' own: random norms and layer scales)
from hf_prune.files import write_text_atomic  # noqa: E402  (after the path set-up above)
from hf_prune.text import markdown_table  # noqa: E402

Timer = Callable[[], dict[str, float]]
"""Runs something once and returns named durations in seconds."""
Column = tuple[str, str, str]
"""(row key, markdown header, format spec); a spec of '' means ``str``."""


def timed(name: str, fn: Callable[[], Any], device: Any = None) -> Timer:
    """A timer measuring one call of ``fn`` as ``name``, in seconds: CUDA events around it where ``device``
    is a CUDA ``torch.device``, the wall clock otherwise."""

    def run() -> dict[str, float]:
        if getattr(device, "type", None) != "cuda":
            start = time.perf_counter()
            fn()
            return {name: time.perf_counter() - start}
        import torch

        torch.cuda.synchronize(device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return {name: begin.elapsed_time(end) / 1e3}

    return run


def alternate(timers: Sequence[Timer], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Samples of every timer over ``repeats`` rounds after ``warmup`` rounds.

    The timers run round-robin, starting one later each round, so load from other processes and
    drift hit all of them alike.
    """
    samples: dict[str, list[float]] = {}
    for i in range(warmup + repeats):
        k = i % len(timers)
        for timer in [*timers[k:], *timers[:k]]:
            for name, seconds in timer().items():
                if i >= warmup:
                    samples.setdefault(name, []).append(seconds)
    return samples


def medians(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def minima(samples: Mapping[str, list[float]], suffix: str = "_min") -> dict[str, float]:
    """``{name + suffix: minimum}``: the least disturbed run when other processes compete for the CPU."""
    return {name + suffix: min(values) for name, values in samples.items()}


def timm_model(name: str, threads: int = 2, seed: int = 0) -> Any:
    """A randomly initialised timm model (no download), with torch set to ``threads`` threads."""
    import timm
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False)


def parse_args(description: str, models: Sequence[str], quick_models: Sequence[str], repeats: int,
               quick_repeats: int, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--models``, ``--repeats``, ``--threads`` and ``--quick`` (quick defaults for models and repeats),
    and the options ``extra`` adds to the parser."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--models", nargs="+", help=f"timm model names (default: {' '.join(models)}; "
                                                     f"--quick: {' '.join(quick_models)})")
    parser.add_argument("--repeats", type=int, help=f"timed repeats (default {repeats}; --quick: {quick_repeats})")
    parser.add_argument("--quick", action="store_true", help="fewer models and repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--suffix", default="", help="appended to the result file names (e.g. a subset of models)")
    args = parser.parse_args()
    args.load_average_start = [round(x, 2) for x in os.getloadavg()]
    args.models = args.models or list(quick_models if args.quick else models)
    args.repeats = args.repeats or (quick_repeats if args.quick else repeats)
    return args


def result_name(base: str, args: argparse.Namespace) -> str:
    """``base``, suffixed ``_quick`` and ``_<n>t`` for quick runs and non-default thread counts, and
    ``_<suffix>`` where one is given."""
    return (base + ("_quick" if args.quick else "") + (f"_{args.threads}t" if args.threads != 2 else "")
            + (f"_{args.suffix}" if getattr(args, "suffix", "") else ""))


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    import timm
    import torch

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "argv": sys.argv[1:],
    }


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt) if fmt else str(value)


def results_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """The markdown table of ``rows``, one column per ``(row key, header, format spec)``."""
    return markdown_table([h for _, h, _ in columns], [[_cell(row.get(k), f) for k, _, f in columns] for row in rows])


def write_results(name: str, rows: list[dict[str, Any]], columns: Sequence[Column], meta: dict[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    """Write ``bench/results/<name>.json`` (rows, meta and environment) and ``<name>.md`` (titled
    ``meta["title"]``, a table with the notes below it), each atomically; returns the markdown path."""
    meta = {**environment(), **meta}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / f"{name}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    load = [meta[k] for k in ("load_average_start", "load_average") if k in meta]
    env = (f"torch {meta['torch']}, timm {meta['timm']}, {meta['threads']} threads, {meta['processor']} "
           f"({meta['cpu_count']} CPUs), load average {' → '.join(map(str, load))}, {meta['date']}")
    text = "\n\n".join([f"# {meta.get('title', name)}", results_table(rows, columns), *notes, f"_{env}_"]) + "\n"
    md = RESULTS / f"{name}.md"
    write_text_atomic(md, text)
    return md


def report(base: str, args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[Column],
           meta: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """Write the results of a run with options ``args`` (see :func:`write_results`) and print the table."""
    meta = {**meta, "models": args.models, "repeats": args.repeats, "quick": args.quick,
            "load_average_start": args.load_average_start}
    print(write_results(result_name(base, args), rows, columns, meta, notes).read_text())
