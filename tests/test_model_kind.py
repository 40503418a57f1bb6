"""One answer to "transformers or timm?", and example inputs shaped as each model takes them."""

from __future__ import annotations

import timm
import torch
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

import pytest

from hf_prune.errors import AnalysisError
from hf_prune.model_kind import example_inputs, images_of, input_size, library_of


def test_library_and_inputs() -> None:
    hf = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    tm = timm.create_model("test_resnet", num_classes=3)
    plain = nn.Conv2d(3, 4, 3)
    assert [library_of(m) for m in (hf, tm, plain)] == ["transformers", "timm", None]
    assert input_size(hf) == (3, 224, 224)  # a convnet config without image_size
    assert input_size(tm) == tuple(tm.pretrained_cfg["input_size"])
    inputs = example_inputs(hf, batch=2, size=(3, 32, 32))
    assert list(inputs) == ["pixel_values"] and inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert images_of(inputs) is inputs["pixel_values"]
    gray = ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8], depths=[1]))
    assert images_of(example_inputs(gray, size=16)).shape == (1, 1, 16, 16)  # an int: square, the model's channels
    assert example_inputs(tm, size=20).shape == (1, 3, 20, 20) and images_of(example_inputs(tm)) is not None
    seeded = [example_inputs(tm, generator=torch.Generator().manual_seed(0), like=torch.empty(0, dtype=torch.float64))
              for _ in range(2)]
    assert torch.equal(*seeded) and seeded[0].dtype == torch.float64
    assert example_inputs(plain, size=(3, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(AnalysisError, match="Conv2d.*pass example_inputs"):
        example_inputs(plain)


def test_a_custom_module_taking_pixel_values_is_called_by_keyword():
    from torch import nn

    from hf_prune.integrations.trainer import ImageClassifierAdapter, trainer_model
    from hf_prune.model_kind import example_inputs, takes_pixel_values

    class HfStyle(nn.Module):  # neither transformers nor timm, but the transformers calling convention
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, pixel_values, labels=None):
            return {"logits": self.conv(pixel_values).mean((2, 3))}

    model = HfStyle()
    assert takes_pixel_values(model) and trainer_model(model) is model
    assert set(example_inputs(model, size=(3, 8, 8))) == {"pixel_values"}
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert not takes_pixel_values(plain) and isinstance(trainer_model(plain), ImageClassifierAdapter)


@pytest.mark.parametrize("name", ["hf_clip", "hf_siglip"])
def test_input_size_of_a_model_with_a_vision_config(name: str) -> None:
    """CLIP / SigLIP classifiers keep image_size and num_channels in their vision config."""
    from models import HF_MODELS

    model = HF_MODELS[name]().eval()
    vision = model.config.vision_config
    assert input_size(model) == (vision.num_channels, vision.image_size, vision.image_size)
    with torch.no_grad():
        assert model(**example_inputs(model, batch=2)).logits.shape[0] == 2


def test_saved_library_reads_real_saved_configs(tmp_path) -> None:
    import json

    from timm.models import save_for_hf
    from transformers import TimmWrapperConfig

    from hf_prune.model_kind import saved_library

    save_for_hf(timm.create_model("test_resnet", num_classes=3), str(tmp_path))
    timm_config = json.loads((tmp_path / "config.json").read_text())
    wrapper = TimmWrapperConfig.from_dict(timm_config).to_dict()  # transformers' TimmWrapper: also 'architecture'
    assert "architecture" in timm_config and "architecture" in wrapper
    assert saved_library(timm_config) == "timm" and saved_library(wrapper) == "transformers"
    assert saved_library(ResNetConfig().to_dict()) == "transformers" and saved_library({"hidden": 8}) is None
