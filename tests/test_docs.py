"""Generated docs stay in sync with the code and the test matrix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["config.md", "architectures.md"])
def test_generated_docs_are_current(name):
    expected = _generator().GENERATED[name]()
    assert (DOCS / name).read_text(encoding="utf-8") == expected, f"run: python docs/generate.py ({name} is stale)"


def test_config_reference_covers_every_key():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    for key in ("params.pruning_flops_target", "params.legr_params.generations", "params.channel_multiple",
                "initializer.batchnorm_adaptation.num_bn_adaptation_samples", "ignored_scopes"):
        assert f"`{key}`" in text
