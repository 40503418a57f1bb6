"""docs/coverage.md is what the code does today (regenerate with: python docs/generate.py)."""

from __future__ import annotations

import pytest

from test_docs import DOCS, _generator


def test_coverage_matrix_is_current_and_every_strip_exact():
    generator = _generator()
    text = (DOCS / "coverage.md").read_text(encoding="utf-8")
    if f"transformers {generator.transformers_major()} " not in text:
        pytest.skip(f"docs/coverage.md is measured on another transformers line than {generator.transformers_major()}")
    expected = generator.GENERATED["coverage.md"]()
    assert "**no**" not in expected, "an architecture's strip is not exact"
    assert text == expected, "run: python docs/generate.py (coverage.md is stale)"
