"""Atomic writes: the old file or the new one, whole, and never a temporary file left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_prune.algorithm.latency import _write as write_latency_table
from hf_prune.config import PruningConfig
from hf_prune.files import write_atomic, write_text_atomic


def _half_then_fail(tmp: str) -> None:
    with open(tmp, "w") as f:
        f.write('{"half": ')
        f.flush()
        raise KeyboardInterrupt("killed while writing")


def test_new_file_replaces_old_whole(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("old")
    assert write_text_atomic(path, "new") == path
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["data.json"]


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_failure_keeps_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   stage: str) -> None:
    path = tmp_path / "data.json"
    path.write_text("old")
    write = _half_then_fail if stage == "write" else (lambda tmp: Path(tmp).write_text("new"))
    if stage != "write":
        def fail(*args: object) -> None:
            raise OSError(f"{stage} failed")
        monkeypatch.setattr(os, stage, fail)
    with pytest.raises((KeyboardInterrupt, OSError)):
        write_atomic(path, write)
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["data.json"]


def test_writers_use_it(tmp_path: Path) -> None:
    """A writer whose data cannot be serialized leaves the old file and nothing else."""
    table = tmp_path / "latency.json"
    table.write_text("old")
    with pytest.raises(TypeError):
        write_latency_table(table, {"key": "k", "table": object()})
    assert table.read_text() == "old" and os.listdir(tmp_path) == ["latency.json"]
    PruningConfig.from_dict({"pruning_init": 0.1}).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["latency.json", "pruning_config.json"]
    assert json.loads((tmp_path / "pruning_config.json").read_text())


def test_report_plots_are_written_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plot that fails half-way keeps the previous run's PNG and leaves no temporary file."""
    from matplotlib.figure import Figure

    from hf_prune.app.report import RunReport, write_report

    report = RunReport(recipe="r.yaml", model="m", level_history=[(0, 0.0), (1, 0.5)])
    old = write_report(report, tmp_path)["pruning_level.png"].read_bytes()
    assert old.startswith(b"\x89PNG")
    save = Figure.savefig

    def half_then_fail(self: Figure, fname: str, **kwargs: object) -> None:
        save(self, fname, **kwargs)
        with open(fname, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt("killed while plotting")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_report(RunReport(recipe="r.yaml", model="m", level_history=[(0, 0.1)]), tmp_path)
    assert (tmp_path / "pruning_level.png").read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["pruning_level.png", "report.json", "report.md"]
