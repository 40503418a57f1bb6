"""What ``import hf_prune`` costs over ``import torch`` (goal < 1.5 s), and what the first use of each
public entry point then imports. Each figure is the median over fresh interpreters; writes
bench/results/import_time.{json,md}."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5
GOAL_S = 1.5
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
    import torch
    import transformers

    result = {"torch": torch.__version__, "transformers": transformers.__version__, "repeats": REPEATS,
              "goal_s": GOAL_S, "met": rows[0]["seconds"] < GOAL_S, "rows": rows}
    out = ROOT / "bench" / "results"
    (out / "import_time.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [markdown_table(["step (cumulative, in one process)", "seconds"],
                            [(r["step"], f"{r['seconds']:.3f}") for r in rows]), "", f"Median of {REPEATS} fresh interpreters after `import torch` (torch {torch.__version__}, "
              f"transformers {transformers.__version__}); each row is the extra time of that first use. "
              f"Goal: `import hf_prune` < {GOAL_S} s ({'met' if result['met'] else 'not met'}). "
              "Measured on a shared 2-core CPU."]
    (out / "import_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
