"""Crash safety: how many of N random SIGKILLs resume bit-identical, per training path.

For each path (``PruningTrainer``, ``AcceleratedPruner`` with ``save_checkpoint``, ``hf-prune train``)
an uninterrupted run gives the reference; then N runs are killed at a uniformly random moment of their
training (inside a save included), started again on the same directory, and their final weights, masks
and schedule compared bit for bit with the reference. The processes are those of the crash tests
(``tests/scripts/crash_children.py``). Goal: N of N for every path.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.ROOT / "tests"))
from scripts import crash_children  # noqa: E402
from scripts.crash_harness import kill_and_resume, run_child, same_result  # noqa: E402

PATHS = {"trainer": crash_children.trainer_run, "accelerate": crash_children.accelerate_run,
         "cli": crash_children.cli_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10, help="random kills per path")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.paths:
            target, start = PATHS[name], time.perf_counter()
            references = []
            for i in range(2):  # the shorter time bounds the kill moments: a first run meets colder caches
                assert run_child(target, Path(tmp) / name / f"reference{i}") == 0
                references.append(torch.load(Path(tmp) / name / f"reference{i}" / "result.pt", weights_only=True))
            assert same_result(*references), f"{name}: two uninterrupted runs differ"
            reference = min(references, key=lambda r: r["seconds"])
            killed = identical = 0
            for i in range(args.kills):
                delay = rng.uniform(0, reference["seconds"])
                exit_code, result = kill_and_resume(target, Path(tmp) / name / str(i), f"random:{delay:.3f}")
                killed += exit_code == -9
                identical += same_result(result, reference)
                restart = result.get("resumed_from", result.get("start_step"))
                print(f"{name} kill {i}: after {delay:.3f} s, exit {exit_code}, restart from {restart}, "
                      f"{'identical' if same_result(result, reference) else 'DIFFERENT'}", flush=True)
            rows.append({"path": name, "kills": args.kills, "killed": killed, "identical": identical,
                         "train_s": reference["seconds"], "bench_s": time.perf_counter() - start})
    columns = [("path", "path", ""), ("kills", "random kills", "d"), ("killed", "killed before the end", "d"),
               ("identical", "resumed bit-identical", "d"), ("train_s", "uninterrupted training (s)", ".2f"),
               ("bench_s", "bench time (s)", ".0f")]
    notes = ["A kill timer fires uniformly within the shorter of two uninterrupted runs' time (the CLI: the "
             "whole `hf-prune train`); a run that ends before its timer is not killed and must still match.",
             "Compared: every weight and buffer, masks and schedule position (the CLI: the saved model's weights)."]
    print(common.write_results("crash_resume", rows, columns, {"title": "Crash safety: random SIGKILLs"}, notes))


if __name__ == "__main__":
    main()
