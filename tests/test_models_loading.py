"""Tests for hf_prune.app.models.load_model: every spec form, offline, with small random-init models."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_prune.app.models import ModelLoadError, load_model
from hf_prune.errors import HfPruneError

from conftest import randomize_norms


def tiny_hf_resnet() -> ResNetForImageClassification:
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    return randomize_norms(ResNetForImageClassification(config)).eval()


def assert_same_model(loaded: torch.nn.Module, saved: torch.nn.Module) -> None:
    """Same parameters and buffers, bit for bit (outputs then match up to kernel round-off)."""
    a, b = loaded.state_dict(), saved.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Hub calls fail at once (as with no network) instead of retrying for half a minute."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("spec", ["timm/test_resnet", "timm:test_resnet", "test_resnet"])
def test_timm_spec_forms(spec: str) -> None:
    model, inputs = load_model(spec, num_classes=7)
    assert type(model).__name__ == "ResNet" and not model.training
    assert isinstance(inputs, torch.Tensor)
    assert tuple(inputs.shape) == (1, *model.pretrained_cfg["input_size"])
    assert model(inputs).shape == (1, 7)


def test_timm_pretrained_tag_and_image_size() -> None:
    model, inputs = load_model("timm/test_resnet.r160_in1k", image_size=48)
    assert inputs.shape == (1, 3, 48, 48)
    assert model(inputs).shape == (1, model.num_classes)


def test_timm_fixed_input_size_model_is_built_for_image_size() -> None:
    model, inputs = load_model("test_vit", image_size=64)
    assert model.pretrained_cfg["fixed_input_size"]
    assert inputs.shape == (1, 3, 64, 64)
    assert model(inputs).shape == (1, model.num_classes)


def test_local_transformers_dir_config_only(tmp_path: Path) -> None:
    tiny_hf_resnet().config.save_pretrained(tmp_path)
    model, inputs = load_model(str(tmp_path), image_size=32, num_classes=3)
    assert isinstance(model, ResNetForImageClassification) and not model.training
    assert set(inputs) == {"pixel_values"} and inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert model(**inputs).logits.shape == (1, 3)


def test_local_transformers_dir_with_weights(tmp_path: Path) -> None:
    saved = tiny_hf_resnet()
    saved.save_pretrained(tmp_path)
    model, inputs = load_model(str(tmp_path), image_size=32)
    assert isinstance(model, ResNetForImageClassification)
    assert_same_model(model, saved)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, saved(**inputs).logits)


def test_local_transformers_dir_new_head(tmp_path: Path) -> None:
    tiny_hf_resnet().save_pretrained(tmp_path)
    model, inputs = load_model(str(tmp_path), image_size=32, num_classes=4)
    assert model(**inputs).logits.shape == (1, 4)


def test_local_timm_dir_with_weights(tmp_path: Path) -> None:
    saved = randomize_norms(timm.create_model("test_resnet", num_classes=10)).eval()
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 10}))
    save_file(saved.state_dict(), tmp_path / "model.safetensors")
    model, inputs = load_model(str(tmp_path), image_size=64)
    assert type(model) is type(saved) and inputs.shape == (1, 3, 64, 64)
    assert_same_model(model, saved)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), saved(inputs))


def test_local_timm_dir_config_only(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 10}))
    model, inputs = load_model(str(tmp_path))
    assert type(model).__name__ == "ResNet"
    assert model(inputs).shape == (1, 10)


def test_local_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnt18"}))
    with pytest.raises(ModelLoadError, match="unknown timm architecture 'resnt18'.*resnet18"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet"}))
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(tmp_path), pretrained=True)
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("spec", ["resnt18", "timm/resnt18"])
def test_unknown_name_suggests_timm_names(spec: str) -> None:
    with pytest.raises(ModelLoadError, match=r"did you mean: resnet18\b") as info:
        load_model(spec)
    assert isinstance(info.value, HfPruneError) and repr(spec) in str(info.value)


def test_timm_pretrained_offline(offline: None) -> None:
    with pytest.raises(ModelLoadError, match="cannot load pretrained weights of timm model 'test_resnet'"):
        load_model("timm/test_resnet", pretrained=True)


@pytest.mark.parametrize("spec", ["someorg/resnet_50", "hf:someorg/resnet_50"])
def test_hub_id_offline(offline: None, spec: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "neither a timm model name nor a local directory" in message
    assert "Hugging Face Hub could not be reached" in message
    assert "did you mean: resnet50" in message


def test_transformers_config_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet_config.json"
    ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=7).to_json_file(path)
    model, inputs = load_model(str(path), image_size=32)
    assert isinstance(model, ResNetForImageClassification)
    assert model(**inputs).logits.shape == (1, 7)
