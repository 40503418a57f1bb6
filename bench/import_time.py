"""What ``import hf_prune`` costs over ``import torch`` (goal < 1.5 s), and what the first use of each
public entry point then imports. Each figure is the median over fresh interpreters; writes
bench/results/import_time.{json,md}."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import write_results

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5
GOAL_S = 1.5
COLUMNS = [("step", "step (cumulative, in one process)", ""), ("seconds", "seconds", ".3f")]
STEPS = [
    ("import hf_prune", "import hf_prune"),
    ("hf_prune.PruningConfig", "hf_prune.PruningConfig"),
    ("hf_prune.create_pruning_controller", "hf_prune.create_pruning_controller"),
    ("hf_prune.from_pretrained + transformers", "hf_prune.from_pretrained; import transformers.modeling_utils"),
    ("hf_prune.PruningTrainer", "hf_prune.PruningTrainer"),
    ("hf_prune.export_onnx", "hf_prune.export_onnx"),
]
PROBE = """
import time, torch
t = time.perf_counter(); import hf_prune; times = [time.perf_counter() - t]
for step in {steps!r}:
    t = time.perf_counter(); exec(step); times.append(time.perf_counter() - t)
print(times)
"""


def main() -> None:
    code = PROBE.format(steps=[s for _, s in STEPS[1:]])
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                      cwd=ROOT).stdout) for _ in range(REPEATS)]
    rows = [{"step": name, "seconds": round(statistics.median(r[i] for r in runs), 3)}
            for i, (name, _) in enumerate(STEPS)]
    import transformers

    met = rows[0]["seconds"] < GOAL_S
    meta = {"title": "What importing hf_prune costs", "transformers": transformers.__version__,
            "repeats": REPEATS, "goal_s": GOAL_S, "met": met}
    notes = [f"Median of {REPEATS} fresh interpreters after `import torch`; each row is the extra time of that "
             f"first use (transformers {transformers.__version__}). Goal: `import hf_prune` < {GOAL_S} s "
             f"({'met' if met else 'not met'})."]
    print(write_results("import_time", rows, COLUMNS, meta, notes).read_text())


if __name__ == "__main__":
    main()
