"""Each model gets its own preprocessing: timm's data config, transformers' AutoImageProcessor; train images
are augmented, eval images are not; data sets are transformed lazily as they are read."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from hf_prune.app.preprocessing import IMAGENET_MEAN, transforms_for


def _image(seed: int = 0, size: int = 48) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_timm_model_uses_its_data_config():
    model = timm.create_model("test_resnet.r160_in1k")  # pretrained_cfg: mean/std 0.5, 160 px
    tf = transforms_for(model, image_size=32)
    assert tf.mean == (0.5, 0.5, 0.5) and tf.std == (0.5, 0.5, 0.5) and tf.image_size == 32
    img = _image()
    assert tf.eval(img).shape == (3, 32, 32)
    assert torch.equal(tf.eval(img), tf.eval(img))
    torch.manual_seed(0)
    a, b = tf.train(img), tf.train(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)  # augmented
    plain = transforms_for(model, image_size=32, mean=[0.1, 0.2, 0.3], std=[1, 1, 1], augment=False)
    assert plain.mean == (0.1, 0.2, 0.3) and plain.train is plain.eval


def test_transformers_model_uses_its_image_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path)
    tf = transforms_for(model)
    assert (tf.mean, tf.std, tf.image_size) == ((0.5,) * 3, (0.5,) * 3, 32)
    assert "AutoImageProcessor" in tf.source
    gray = Image.new("RGB", (40, 40), (255, 255, 255))
    assert torch.allclose(tf.eval(gray), torch.ones(3, 32, 32))  # (1 - 0.5) / 0.5
    # a model built from a config alone has no processor: ImageNet statistics, its configured size
    scratch = transforms_for(ViTForImageClassification(config))
    assert scratch.mean == IMAGENET_MEAN and scratch.image_size == 32 and "ImageNet" in scratch.source


def test_image_folder_is_transformed_lazily_with_train_and_eval_transforms(tmp_path):
    pytest.importorskip("datasets")
    from hf_prune.app.data import load_image_data

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(4):
            _image(seed=hash((label, i)) % 1000).save(tmp_path / label / f"{i}.png")
    model = timm.create_model("test_resnet.r160_in1k")
    data = load_image_data("imagefolder", transforms_for(model, image_size=32), path=str(tmp_path))
    assert data.num_classes == 2 and data.labels == ["cat", "dog"]
    torch.manual_seed(0)
    first, again = data.train[0]["pixel_values"], data.train[0]["pixel_values"]
    assert first.shape == (3, 32, 32) and not torch.equal(first, again)  # re-augmented at every read
    assert torch.equal(data.eval[0]["pixel_values"], data.eval[0]["pixel_values"])


def test_recipe_preprocessing_overrides_are_validated():
    from hf_prune.app.recipes import DataSpec

    spec = DataSpec(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], augment=False)
    assert spec.mean == [0.5] * 3 and spec.augment is False
    with pytest.raises(ValueError, match="mean"):
        DataSpec(mean=[])
