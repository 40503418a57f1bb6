"""The shared "did you mean" hint and markdown table."""

from __future__ import annotations

from hf_prune.text import did_you_mean, markdown_table


def test_did_you_mean() -> None:
    assert did_you_mean("pruning_taget", ["pruning_target", "pruning_init"]) == "; did you mean 'pruning_target'?"
    assert did_you_mean("resnt18", ["resnet18", "resnet10t", "vit"], n=5) == "; did you mean: resnet18, resnet10t?"
    assert did_you_mean("zzz", ["pruning_target"]) == ""


def test_markdown_table() -> None:
    assert markdown_table(["", "ms"], [("dense", 1.5), ("pruned", None)], "lr") == (
        "|  | ms |\n|---|---:|\n| dense | 1.5 |\n| pruned | None |")
