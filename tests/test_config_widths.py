"""A stripped transformers model's config tells the truth about its widths (issue 12, item 3): every width
field that one value can still describe holds the stripped width, after the strip, after save +
``from_pretrained`` and with a new head; the dense architecture is still what the record narrows."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import transformers
from torch import nn
from transformers import AutoModelForImageClassification

import hf_prune
from hf_prune.graph.config_widths import get_fields
from hf_prune.graph.record import dense_reference, pruning_record

from conftest import randomize_norms
from models import build, first


def _stages(model: nn.Module, x: dict) -> list[int]:
    """The channels of each stage's output (the embedding's first)."""
    return [h.shape[1] for h in model(**x, output_hidden_states=True).hidden_states]


def _mlp_width(layers: nn.Module) -> int | None:
    """The MLP width of a ViT encoder's layers when they all have the same one."""
    widths = {m.out_features for name, m in layers.named_modules() if name.endswith("intermediate.dense")
              or name.endswith("mlp.fc1")}
    return widths.pop() if len(widths) == 1 else None


def _tokens(model: nn.Module, x: dict) -> int:
    return model(**x, output_hidden_states=True).hidden_states[-1].shape[-1]


WIDTHS: dict[str, Callable[[nn.Module, dict], dict[str, Any]]] = {
    "hf_efficientnet": lambda m, x: {"hidden_dim": m.classifier.in_features},
    "hf_resnet": lambda m, x: dict(zip(("embedding_size", "hidden_sizes"), (lambda s: (s[0], s[1:]))(_stages(m, x)))),
    "hf_regnet": lambda m, x: dict(zip(("embedding_size", "hidden_sizes"), (lambda s: (s[0], s[1:]))(_stages(m, x)))),
    "hf_convnext": lambda m, x: {"hidden_sizes": _stages(m, x)[1:]},
    **{name: (lambda m, x: {"hidden_size": _tokens(m, x), "intermediate_size": _mlp_width(m)})
       for name in ("hf_vit", "hf_deit", "hf_beit", "hf_data2vec_vision", "hf_vit_msn", "hf_ijepa", "hf_dinov2")},
    **{name: (lambda m, x: {"vision_config.hidden_size": _tokens(m, x), "vision_config.intermediate_size": _mlp_width(m)})
       for name in ("hf_clip", "hf_siglip")},
    "hf_swin": lambda m, x: {"hidden_size": m.classifier.in_features},
    "hf_swinv2": lambda m, x: {"hidden_size": m.classifier.in_features},
    **{name: (lambda m, x: {}) for name in ("hf_pvt", "hf_mobilevit", "hf_mobilenet_v2")},  # reload checks only
}
"""Per architecture: the width each config field names, measured on the model (None: no single value)."""


@functools.cache
def _stripped(name: str) -> tuple[nn.Module, nn.Module, dict]:
    torch.manual_seed(0)
    dense, inputs, _ = build(name)
    randomize_norms(dense)
    controller = hf_prune.create_pruning_controller(dense, {"pruning_init": 0.5}, example_inputs=first(inputs))
    return dense, controller.strip_model(dense, do_copy=True).eval(), first(inputs)


def assert_truthful(name: str, model: nn.Module, x: dict) -> None:
    with torch.no_grad():
        measured = WIDTHS[name](model, x)
    stated = get_fields(model.config, [field for field, width in measured.items() if width is not None])
    assert stated == {field: measured[field] for field in stated}


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_config_widths_tell_the_truth(tmp_path: Path, name: str) -> None:
    if name == "hf_pvt" and transformers.__version__.startswith("4."):
        pytest.skip("transformers 4.57's PvtConfig(num_labels=1000) default breaks reloads after a "
                    "from_pretrained(num_labels=3) in the same process, dense models too")
    dense, stripped, x = _stripped(name)
    assert_truthful(name, stripped, x)
    reference = dense_reference(stripped)  # still the dense architecture
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in dense.state_dict().items()}
    stripped.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    assert_truthful(name, reloaded, x)
    assert pruning_record(reloaded)["dense_config"] == pruning_record(stripped)["dense_config"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, stripped(**x).logits)
    head = AutoModelForImageClassification.from_pretrained(tmp_path / "model", num_labels=3,
                                                           ignore_mismatched_sizes=True).eval()
    assert_truthful(name, head, x)
    with torch.no_grad():
        assert head(**x).logits.shape == (1, 3)


def test_a_width_the_classifier_reads_is_updated() -> None:
    """EfficientNet's ``hidden_dim`` sizes the classifier's input: 320 dense, the stripped width after."""
    dense, stripped, _ = _stripped("hf_efficientnet")
    assert dense.config.hidden_dim == 320 and stripped.config.hidden_dim == stripped.classifier.in_features < 320
    assert pruning_record(stripped)["dense_config"] == {"hidden_dim": 320}


def test_hidden_size_and_head_count_change_together(tmp_path: Path) -> None:
    """A ViT with its embedding dimension and its heads pruned (the patch embedding pruned too) is described by
    ``hidden_size`` and ``num_attention_heads`` together (the per-head width is ``hidden_size // heads``): the
    config says both, and transformers' own reload builds the same model (attention's ``scaling`` included)."""
    torch.manual_seed(0)
    dense, inputs, _ = build("hf_vit")
    randomize_norms(dense)
    config = {"pruning_init": 0.5, "params": {"prune_first_conv": True, "prune_downsample_convs": True}}
    stripped = hf_prune.create_pruning_controller(dense, config, example_inputs=first(inputs)).strip_model(
        dense, do_copy=True).eval()
    x = first(inputs)
    heads = {m.num_attention_heads for m in stripped.modules() if hasattr(m, "num_attention_heads")}
    assert stripped.config.hidden_size < dense.config.hidden_size and heads == {stripped.config.num_attention_heads}
    assert_truthful("hf_vit", stripped, x)
    stripped.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, stripped(**x).logits)


def test_head_count_of_a_tower_the_model_does_not_build_is_left_alone(tmp_path: Path) -> None:
    """CLIP's classifier builds only the vision tower: 3 of 4 heads kept there must not change its text
    config's head count (a text hidden size of 32 is no multiple of 3: transformers refused the reload)."""
    torch.manual_seed(0)
    dense, inputs, _ = build("hf_clip")
    ctrl = hf_prune.create_pruning_controller(dense, {"pruning_init": 0.3}, example_inputs=first(inputs))
    stripped = ctrl.strip_model(dense, do_copy=True).eval()
    assert stripped.config.text_config.num_attention_heads == dense.config.text_config.num_attention_heads
    stripped.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    x = first(inputs)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, stripped(**x).logits)
