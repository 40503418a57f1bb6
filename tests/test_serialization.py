"""Saving and reloading pruned models: every architecture family, transformers' own entry points,
runs in progress, atomic saves and bad directories."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

import hf_prune
from hf_prune_autoload import TRANSFORMERS_MODULE, after_import, register_loader
from hf_prune.algorithm.controller import has_pruning_masks
from hf_prune.app.models import ModelLoadError, load_model
from hf_prune.graph.record import model_library, pruning_record
from hf_prune.integrations import loader
from hf_prune.integrations.pruning_state import STATE_NAME, load_pruning_controller
from hf_prune.integrations.serialization import PrunedModelError, from_pretrained, logits, save_pretrained
from hf_prune.model_kind import input_size

from conftest import randomize_norms
from models import HF_MODELS

TIMM_CASES: dict[str, Callable[[], nn.Module]] = {
    "timm_resnet": lambda: timm.create_model("test_resnet", num_classes=10),
    "timm_resnext": lambda: timm.create_model("resnext50_32x4d", layers=(1, 1, 1, 1), num_classes=10),
    "timm_densenet": lambda: timm.create_model("densenet121", block_config=(1, 1, 1, 1), growth_rate=16,
                                               num_classes=10),
    "timm_convnext": lambda: timm.create_model("test_convnext", num_classes=10),
    "timm_vit": lambda: timm.create_model("test_vit", img_size=32, num_classes=10),
    # modules shared by several blocks: one tensor under several state-dict names
    "timm_coat": lambda: timm.create_model("coat_tiny", img_size=32, num_classes=10),
}
HF_CASES = ["hf_resnet", "hf_vit", "hf_convnext", "hf_mobilenet_v2"]
CASES = [*TIMM_CASES, *HF_CASES]


def images(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A random batch of the size the model takes (32×32 for models that take any size)."""
    channels, height, width = input_size(model)
    if model_library(model) == "timm" and not model.pretrained_cfg.get("fixed_input_size"):
        height = width = 32
    return torch.randn(batch, channels, height, width)


def pruned(name: str) -> tuple[nn.Module, Any, nn.Module]:
    """(a dense model, a controller masking 50% of the filters of a copy, a stripped copy): a fresh copy of
    what is built once per session, so that no test sees what another one did to its models."""
    return copy.deepcopy(_pruned(name))


@functools.cache
def _pruned(name: str) -> tuple[nn.Module, Any, nn.Module]:
    torch.manual_seed(0)
    dense = randomize_norms((TIMM_CASES[name] if name in TIMM_CASES else HF_MODELS[name])()).eval()
    x = images(dense, 1)
    controller = hf_prune.create_pruning_controller(
        copy.deepcopy(dense), {"pruning_init": 0.5}, example_inputs={"pixel_values": x} if name in HF_CASES else x)
    return dense, controller, controller.strip_model(do_copy=True)


def assert_same(loaded: nn.Module, saved: nn.Module) -> None:
    """Same class, same tensors bit for bit, same logits."""
    assert type(loaded) is type(saved)
    a, b = loaded.state_dict(), saved.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = images(saved)
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded.eval(), x), logits(saved.eval(), x), rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_save_reload_is_exact(tmp_path: Path, name: str) -> None:
    dense, _, stripped = pruned(name)
    assert sum(p.numel() for p in stripped.parameters()) < sum(p.numel() for p in dense.parameters())
    save_pretrained(stripped, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    record = config["hf_prune"] if name in TIMM_CASES else config["quantization_config"]
    assert record["quant_method"] == "hf_prune" and record["format_version"] == 1
    assert record["shape_spec"]["shapes"] and record["pruning"]["statistics"]["flops_after"] > 0
    if name in TIMM_CASES:
        assert {"architecture", "num_classes", "pretrained_cfg", "model_args"} <= config.keys()
        assert (tmp_path / "model" / "model.safetensors").is_file()
    loaded = from_pretrained(tmp_path / "model")
    assert_same(loaded, stripped)
    assert pruning_record(loaded)["shape_spec"] == record["shape_spec"]


def test_transformers_entry_points_train_and_save_again(tmp_path: Path) -> None:
    _, _, stripped = pruned("hf_vit")
    stripped.save_pretrained(tmp_path / "stripped")  # transformers' own save: the strip recorded the shapes
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "stripped")
    assert_same(model, stripped)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model, "quantization_method") and not hasattr(model.config, "_pre_quantization_dtype")
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 10} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                             learning_rate=0.1, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    assert not torch.equal(model.classifier.weight, stripped.classifier.weight)
    model.save_pretrained(tmp_path / "trained")
    assert_same(AutoModelForImageClassification.from_pretrained(tmp_path / "trained"), model)


def test_registration_happens_once() -> None:
    for _ in range(2):  # transformers is imported: registers at once, and again without complaint
        after_import(TRANSFORMERS_MODULE, register_loader)
    assert AUTO_QUANTIZER_MAPPING["hf_prune"] is loader.PrunedShapesLoader
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["hf_prune"] is loader.PrunedShapesConfig


def test_run_in_progress_resumes(tmp_path: Path) -> None:
    model = randomize_norms(timm.create_model("test_resnet", num_classes=10)).eval()
    config = {"pruning_init": 0.1, "params": {"schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 4}}
    controller = hf_prune.create_pruning_controller(model, config, example_inputs=torch.randn(1, 3, 32, 32))
    for _ in range(2):
        controller.scheduler.epoch_step()
    with pytest.raises(PrunedModelError, match="masks are still active"):
        save_pretrained(model, tmp_path / "run")
    save_pretrained(model, tmp_path / "run", controller=controller)
    reloaded = from_pretrained(tmp_path / "run")
    resumed = load_pruning_controller(reloaded, tmp_path / "run")
    assert has_pruning_masks(reloaded) and resumed.scheduler.current_epoch == controller.scheduler.current_epoch
    assert all(torch.equal(resumed.group_masks()[g], m) for g, m in controller.group_masks().items())
    assert_same(reloaded, model)
    controller.scheduler.epoch_step()
    resumed.scheduler.epoch_step()
    assert resumed.pruning_level == controller.pruning_level > 0.1
    assert all(torch.equal(resumed.group_masks()[g], m) for g, m in controller.group_masks().items())
    other = timm.create_model("test_resnet", num_classes=10, channels=(16, 32, 48, 64))
    with pytest.raises(hf_prune.PruningStateError, match=r"pruning_state\.pt belongs to another model: ResNet with "
                                                         r"pruning groups of sizes \[.*\], not ResNet with"):
        load_pruning_controller(other, tmp_path / "run")
    with pytest.raises(hf_prune.PruningStateError, match="missing pruning_state.pt"):
        load_pruning_controller(other, tmp_path)
    state = torch.load(tmp_path / "run" / STATE_NAME, weights_only=True)
    torch.save({**state, "format_version": 99}, tmp_path / "run" / STATE_NAME)
    with pytest.raises(hf_prune.PruningStateError, match=r"pruning_state\.pt: format_version 99, this hf_prune reads"):
        load_pruning_controller(reloaded, tmp_path / "run")


def test_failed_save_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, stripped = pruned("timm_resnet")
    target = tmp_path / "model"
    save_pretrained(stripped, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(model: nn.Module, config_path: str, **kwargs: Any) -> None:  # after the weights, a partial config
        Path(config_path).write_text("{", encoding="utf-8")
        raise OSError("disk full")

    monkeypatch.setattr(timm.models._hub, "save_config_for_hf", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(stripped, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left behind


def test_save_refuses_to_replace_other_directories(tmp_path: Path) -> None:
    _, _, stripped = pruned("timm_resnet")
    (tmp_path / "checkpoint-10").mkdir()
    with pytest.raises(PrunedModelError, match="refusing to replace"):
        save_pretrained(stripped, tmp_path)
    with pytest.raises(PrunedModelError, match="neither a transformers PreTrainedModel nor a timm model"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "linear")


@pytest.fixture(params=["timm_resnet", "hf_resnet"])
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A directory holding a stripped model."""
    save_pretrained(pruned(request.param)[2], tmp_path / "model")
    return tmp_path / "model"


def edit_config(directory: Path, edit: Callable[[dict], None]) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def record_of(config: dict) -> dict:
    return config.get("hf_prune") or config["quantization_config"]


def load_both_ways(directory: Path) -> list[Callable[[], Any]]:
    """hf_prune's loader, and transformers' own for a transformers directory."""
    loaders = [lambda: from_pretrained(directory)]
    if "quantization_config" in json.loads((directory / "config.json").read_text()):
        loaders.append(lambda: AutoModelForImageClassification.from_pretrained(directory))
    return loaders


def test_weights_not_matching_the_recorded_shapes(saved: Path) -> None:
    weights = load_file(saved / "model.safetensors")
    key = next(k for k in record_of(json.loads((saved / "config.json").read_text()))["shape_spec"]["shapes"]
               if weights[k].dim() == 4)
    weights[key] = weights[key][:-1]
    save_file(weights, saved / "model.safetensors", metadata={"format": "pt"})
    for load in load_both_ways(saved):
        with pytest.raises(PrunedModelError) as info:
            load()
        message = str(info.value)
        assert "model.safetensors" in message and key in message and "config.json" in message


def test_unknown_format_version(saved: Path) -> None:
    edit_config(saved, lambda c: record_of(c).update(format_version=99))
    for load in load_both_ways(saved):
        with pytest.raises(PrunedModelError, match=r"config\.json: hf_prune format_version 99 is not supported"):
            load()


def test_missing_files(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(PrunedModelError, match="missing model.safetensors"):
        from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(PrunedModelError, match="missing config.json"):
        from_pretrained(saved)
    with pytest.raises(PrunedModelError, match="no such directory"):
        from_pretrained(saved / "nowhere")


def test_config_of_a_different_architecture(saved: Path) -> None:
    def other(config: dict) -> None:
        if "architecture" in config:
            config.update(architecture="test_convnext")
        else:
            config.update(model_type="convnext", architectures=["ConvNextForImageClassification"])

    edit_config(saved, other)
    for load in load_both_ways(saved):
        with pytest.raises(PrunedModelError, match=r"config\.json: the recorded shapes do not fit ConvNe[Xx]t"):
            load()


def test_config_of_no_known_kind(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PrunedModelError, match="neither a transformers config"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PrunedModelError, match="config.json: not valid JSON"):
        from_pretrained(tmp_path)


def test_load_model_routes_pruned_directories(saved: Path) -> None:
    model, inputs = load_model(str(saved), image_size=48)
    assert pruning_record(model) is not None
    x = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
    assert x.shape[-2:] == (48, 48) and logits(model, x).shape == (1, 10)
    if "quantization_config" in json.loads((saved / "config.json").read_text()):  # transformers: a new head
        model, inputs = load_model(str(saved), num_classes=3)
        assert logits(model, inputs["pixel_values"]).shape == (1, 3)
    else:
        with pytest.raises(ModelLoadError, match="pruned timm model; replacing its classifier head is not supported"):
            load_model(str(saved), num_classes=3)
