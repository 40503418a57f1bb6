"""A stripped timm model is complete: its model-level widths (``num_features``, ``head_hidden_size``,
``embed_dim``, ``feature_info``) tell the truth after the strip, after save + reload and after
``reset_classifier``, and timm's feature extraction works on it (issue 12, item 3)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from timm.models._features import FeatureGetterNet

import hf_prune
from hf_prune.integrations.serialization import from_pretrained, save_pretrained
from conftest import randomize_norms
from models import TIMM_TEST_MODELS, build, first

CASES = ["resnet18", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto",
         "densenet121", "vit_tiny_patch16_224", "test_resnet", "test_efficientnet", "test_convnext",
         "test_vit", "test_byobnet", "test_nfnet"]
"""One of each family of the matrix (tests/models.py), at small input sizes."""


@functools.cache
def stripped(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(the dense model, a copy stripped at 50% of the filters, one example image), built once."""
    model, inputs, _ = build(name)
    randomize_norms(model)
    x = first(inputs)
    controller = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=x)
    controller.set_pruning_level(0.5)
    return model, controller.strip_model(model, do_copy=True), x


def channels(t: torch.Tensor, model: nn.Module) -> int:
    """The channel width of a feature map or token sequence ``model`` produced."""
    return t.shape[1] if t.dim() == 4 and getattr(model, "output_fmt", "NCHW") == "NCHW" else t.shape[-1]


def widths(model: nn.Module) -> dict:
    return {"num_features": model.num_features, "head_hidden_size": model.head_hidden_size,
            "embed_dim": getattr(model, "embed_dim", None), "feature_info": [e["num_chs"] for e in model.feature_info]}


def assert_truthful(model: nn.Module, x: torch.Tensor) -> None:
    """Every width attribute equals the width of the tensor it describes."""
    with torch.no_grad():
        features = model.forward_features(x)
        assert channels(features, model) == model.num_features
        if isinstance(getattr(model, "embed_dim", None), int) and features.dim() == 3:  # a token model's width
            assert model.embed_dim == model.num_features
        assert model.forward_head(features, pre_logits=True).shape[-1] == model.head_hidden_size
        classifier = model.get_classifier()
        if isinstance(classifier, nn.Linear):
            assert classifier.in_features == model.head_hidden_size
        intermediates = model.forward_intermediates(x, indices=len(model.feature_info), intermediates_only=True)
        assert [t.shape[1] for t in intermediates] == [e["num_chs"] for e in model.feature_info]


@pytest.mark.parametrize("name", CASES)
def test_widths_are_true_after_strip_reload_and_new_head(tmp_path: Path, name: str) -> None:
    dense, small, x = stripped(name)
    assert_truthful(small, x)
    with torch.no_grad():
        reference = small(x)

    save_pretrained(small, tmp_path / "model")
    loaded = from_pretrained(tmp_path / "model")
    assert widths(loaded) == widths(small)
    assert_truthful(loaded, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference, rtol=0, atol=0)

    # timm's feature extraction over the reloaded model: channels as feature_info says
    extractor = FeatureGetterNet(from_pretrained(tmp_path / "model"), out_indices=len(loaded.feature_info))
    with torch.no_grad():
        maps = extractor(x)
    assert [channels(t, loaded) for t in maps] == extractor.feature_info.channels()

    loaded.reset_classifier(5)
    with torch.no_grad():
        assert loaded(x).shape == (1, 5)
    loaded.reset_classifier(0)
    with torch.no_grad():
        assert loaded(x).shape == (1, loaded.head_hidden_size)


def test_widths_shrink_where_the_model_shrinks() -> None:
    """MobileNetV2 at 50% (the issue's case): the head, the classifier and the feature maps are narrower,
    and a new classifier takes the stripped width."""
    dense, small, x = stripped("mobilenetv2_100")
    assert small.num_features == small.head_hidden_size == small.get_classifier().in_features < dense.num_features
    assert all(s["num_chs"] <= d["num_chs"] for s, d in zip(small.feature_info, dense.feature_info))
    assert [e["num_chs"] for e in small.feature_info] != [e["num_chs"] for e in dense.feature_info]
    model = copy.deepcopy(small)
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (1, 5)

def test_timm_swin_widths_after_strip() -> None:
    """Swin (NHWC features, ``embed_dim`` the first stage's width; built with constructor arguments, so
    saved with ``model_args``): widths true after the strip."""
    _, small, x = stripped("timm_swin")
    assert_truthful(small, x)


@pytest.mark.parametrize("name", [n for n in TIMM_TEST_MODELS if n not in CASES])
def test_every_timm_test_model(name: str) -> None:
    """The rest of timm's test_* models: widths true after the strip, and a new classifier works."""
    _, small, x = stripped(name)
    assert_truthful(small, x)
    small = copy.deepcopy(small)
    small.reset_classifier(5)
    with torch.no_grad():
        assert small(x).shape == (1, 5)


def test_timm_model_inside_transformers_wrapper(tmp_path: Path) -> None:
    """transformers' ``TimmWrapperForImageClassification``: the inner timm model's widths follow the strip
    and the reload (through transformers' loader)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_efficientnet", num_labels=10))
    randomize_norms(model.eval())
    x = torch.randn(1, 3, 64, 64)
    controller = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}},
                                                    example_inputs={"pixel_values": x})
    controller.set_pruning_level(0.5)
    small = controller.strip_model(model, do_copy=True)
    assert small.timm_model.num_features < model.timm_model.num_features
    assert_truthful(small.timm_model, x)
    save_pretrained(small, tmp_path / "model")
    loaded = from_pretrained(tmp_path / "model")
    assert widths(loaded.timm_model) == widths(small.timm_model)
    assert_truthful(loaded.timm_model, x)
