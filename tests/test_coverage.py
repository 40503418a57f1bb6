"""docs/coverage.md is what the code does with the installed libraries.

Fast checks: its rows are exactly the architectures the installed timm, torchvision and transformers
enumerate (a new family or class makes it stale), and a sample of rows recomputes to what it says. The whole
recomputation is a slow test. When any fails, regenerate with the command the failure names.
"""

from __future__ import annotations

import re

import pytest
import transformers

from test_docs import doc_script

coverage = doc_script("coverage")
TEXT = coverage.DOC.read_text(encoding="utf-8")
DOCUMENTED = coverage.parse(TEXT)
SAMPLE = [("timm", "resnet"), ("torchvision", "squeezenet"), ("transformers", "Dinov2ForImageClassification")]
"""Rows recomputed by the fast test: a timm, a torchvision and a transformers model, one with attention heads."""
STALE = f"docs/coverage.md is stale: run {coverage.COMMAND}"

measured_major = re.search(r"Measured with transformers (\d+)\.", TEXT)
pytestmark = pytest.mark.skipif(
    measured_major is None or measured_major.group(1) != transformers.__version__.split(".")[0],
    reason=f"docs/coverage.md is measured on another transformers major release than {transformers.__version__}")


def test_rows_are_the_installed_architectures():
    expected = {(library, key) for library, keys in coverage.row_keys().items() for key in keys}
    new, gone = sorted(expected - set(DOCUMENTED)), sorted(set(DOCUMENTED) - expected)
    assert not new and not gone, f"{STALE} (rows to add: {new}; rows to remove: {gone})"


@pytest.mark.parametrize(("library", "key"), SAMPLE, ids=[key for _, key in SAMPLE])
def test_sample_rows_are_current(library, key):
    documented = DOCUMENTED[(library, key)]
    model = documented[1].split("`")[1]  # the row's model as documented: no search for the family's smallest
    assert coverage.compute_rows([(library, key, model)])[(library, key)] == documented, STALE


def test_every_strip_is_exact():
    column = coverage.HEADER.index("exact strip")
    inexact = sorted(row_key for row_key, row in DOCUMENTED.items() if row[column] not in ("yes", coverage.NA))
    assert not inexact, f"stripped != masked for {inexact}"


@pytest.mark.slow
def test_whole_matrix_is_current():
    rows = coverage.compute_rows(coverage.all_tasks(), jobs=2)
    assert coverage.render(rows) == TEXT, STALE
