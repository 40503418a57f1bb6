"""docs/coverage.md is what the code does today (regenerate with: python docs/generate.py)."""

from __future__ import annotations

from test_docs import DOCS, _generator


def test_coverage_matrix_is_current_and_every_strip_exact():
    expected = _generator().GENERATED["coverage.md"]()
    assert "**no**" not in expected, "an architecture's strip is not exact"
    assert (DOCS / "coverage.md").read_text(encoding="utf-8") == expected, \
        "run: python docs/generate.py (coverage.md is stale)"
