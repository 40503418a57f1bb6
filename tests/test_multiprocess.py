"""Two real processes on CPU over gloo: PruningTrainer under ``torchrun --nproc_per_node 2``, AcceleratedPruner
under ``accelerate launch --multi_gpu --num_processes 2`` (with ``Accelerator(cpu=True)``).

Each script trains uninterrupted, then interrupted after epoch 1 and resumed; every rank reports what
it ended with. Masks and parameters must agree across ranks, the loss must fall, the main process alone
must write one checkpoint, and the resumed run must end bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.common import same_tensors

SCRIPTS = Path(__file__).parent / "scripts"
TIMEOUT_S = 300
TORCHRUN = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(launcher: list[str], script: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", *launcher, str(SCRIPTS / script), str(out)]
    return subprocess.run(cmd, cwd=SCRIPTS, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=TIMEOUT_S,
                          capture_output=True, text=True)


def _launch(launcher: list[str], script: str, out: Path, **env: str) -> list[dict]:
    proc = _run(launcher, script, out, **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_runs(ranks: list[dict]) -> None:
    first, second = (r["full"] for r in ranks)
    assert same_tensors(first["masks"], second["masks"]), "masks differ across ranks"
    assert same_tensors(first["params"], second["params"]), "parameters differ across ranks"
    assert any(not m.all() for m in first["masks"].values())
    assert first["losses"][-1] < first["losses"][0]
    for rank in ranks:
        full, resumed = rank["full"], rank["resumed"]
        assert same_tensors(full["masks"], resumed["masks"])
        assert full["scheduler"] == resumed["scheduler"]
        assert same_tensors(full["state"], resumed["state"]), "resumed run does not end where the uninterrupted one did"
    assert ranks[0]["files"] == ranks[1]["files"]


def test_pruning_trainer_on_two_processes(tmp_path):
    ranks = _launch(TORCHRUN, "ddp_trainer.py", tmp_path)
    _check_runs(ranks)
    files = ranks[0]["files"]
    assert {f.split("/")[0] for f in files} == {"checkpoint-24"}  # save_total_limit=1: one checkpoint
    assert {"checkpoint-24/pruning_state.pt", "checkpoint-24/model.safetensors"} <= set(files)
    assert not any(f.endswith(".tmp") for f in files)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 GPUs")]),
])
def test_accelerated_pruner_on_two_processes(tmp_path, device):
    # the README's multi-GPU command: 2 GPUs over NCCL, or (Accelerator(cpu=True)) 2 CPU processes over gloo
    launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    ranks = _launch(launcher, "ddp_accelerate.py", tmp_path, HF_PRUNE_TEST_DEVICE=device)
    _check_runs(ranks)
    assert same_tensors(ranks[0]["full"]["bn_stats"], ranks[1]["full"]["bn_stats"]), "BN adaptation not reduced"
    assert ranks[0]["files"] == ["checkpoint/custom_checkpoint_0.pkl", "checkpoint/model.safetensors",
                                 "checkpoint/optimizer.bin", "checkpoint/random_states_0.pkl",
                                 "checkpoint/random_states_1.pkl"]


def test_two_processes_killed_inside_a_save_resume_from_a_complete_checkpoint(tmp_path):
    """The main process dies writing checkpoint-6's trainer state (torchrun ends the other): the restart's
    processes both resume from checkpoint-3, the newest complete one, and end as an uninterrupted run."""
    reference = _launch(TORCHRUN, "ddp_crash.py", tmp_path / "reference")
    killed = _run(TORCHRUN, "ddp_crash.py", tmp_path / "run", KILL="trainer_state_half:2")
    assert killed.returncode != 0 and not list((tmp_path / "run").glob("rank*.pt"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-6").is_dir()  # incomplete, and the newest
    resumed = _launch(TORCHRUN, "ddp_crash.py", tmp_path / "run")
    for full, restarted in zip(reference, resumed):
        assert same_tensors(full["masks"], restarted["masks"]) and full["scheduler"] == restarted["scheduler"]
        assert same_tensors(full["state"], restarted["state"])
