"""Generated docs stay in sync with the code and the test matrix."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def doc_script(name: str) -> ModuleType:
    """The script ``docs/<name>.py`` as a module (registered, as a dataclass it defines looks itself up)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["config.md", "architectures.md"])
def test_generated_docs_are_current(name):
    expected = doc_script("generate").GENERATED[name]()
    assert (DOCS / name).read_text(encoding="utf-8") == expected, f"run: python docs/generate.py ({name} is stale)"


def test_config_reference_covers_every_key():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    for key in ("params.pruning_flops_target", "params.legr_params.generations", "params.channel_multiple",
                "initializer.batchnorm_adaptation.num_bn_adaptation_samples", "ignored_scopes"):
        assert f"`{key}`" in text
