"""Runs the processes of :mod:`crash_children` and kills them: shared by the crash tests and ``bench/crash_resume.py``.

The processes are forked from a server that imported torch and transformers once (multiprocessing's
``forkserver`` with preloading), so a restart costs milliseconds instead of seconds of imports.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Callable

import torch

from scripts.common import same_tensors

TIMEOUT_S = 300
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["scripts.crash_children", "hf_prune.integrations.trainer",
                                 "hf_prune.integrations.accelerate", "hf_prune.app.run", "hf_prune.app.cli"])


def run_child(target: Callable[..., None], out: Path, kill: str | None = None) -> int:
    """Run ``target(out, kill)`` in a new process; its exit code (-9 when it was killed)."""
    process = _context.Process(target=target, args=(str(out), kill))
    process.start()
    process.join(TIMEOUT_S)
    if process.exitcode is None:
        process.kill()
        raise TimeoutError(f"{target.__name__} did not finish in {TIMEOUT_S} s")
    return process.exitcode


def same_result(a: dict, b: dict) -> bool:
    return same_tensors(a["masks"], b["masks"]) and a["scheduler"] == b["scheduler"] and same_tensors(a["state"], b["state"])


def kill_and_resume(target: Callable[..., None], out: Path, kill: str) -> tuple[int, dict]:
    """Kill a run at ``kill``, restart it without a kill; (exit code of the killed run, final result)."""
    killed = run_child(target, out, kill)
    if run_child(target, out) != 0:
        raise RuntimeError(f"the restart of {target.__name__} after {kill} failed")
    return killed, torch.load(out / "result.pt", weights_only=True)
