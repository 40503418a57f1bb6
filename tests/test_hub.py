"""push_to_hub and the model card; the Hub itself is replaced by a recorder of the upload it is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, RepoUrl
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hf_prune
from hf_prune.integrations.hub import _stage, model_statistics, push_to_hub
from hf_prune.integrations.serialization import PrunedModelError, from_pretrained, logits
from hf_prune.model_kind import input_size

from conftest import randomize_norms
from test_serialization import assert_same, pruned


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits(model.eval(), x)
    return counter.get_total_flops()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Intercepts the Hub calls of ``HfApi``: each upload is recorded with its folder's files and model."""
    uploads: list[dict[str, Any]] = []

    def create_repo(self: HfApi, repo_id: str, **kwargs: Any) -> RepoUrl:
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self: HfApi, *, repo_id: str, folder_path: Path, **kwargs: Any) -> str:
        folder = Path(folder_path)
        uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                        "card": ModelCard.load(folder / "README.md"), "model": from_pretrained(folder), **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def test_push_transformers_model_with_card(hub: list[dict[str, Any]], tmp_path: Path) -> None:
    dense, controller, stripped = pruned("hf_resnet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: hf_resnet\npruning:\n  pruning_init: 0.5\n")
    url = push_to_hub(stripped, "me/resnet-pruned", controller=controller, recipe=recipe,
                      base_model="microsoft/resnet-50")
    assert url.endswith("/commit/0") and len(hub) == 1
    upload = hub[0]
    assert upload["repo_id"] == "me/resnet-pruned"
    assert {"config.json", "model.safetensors", "README.md"} <= set(upload["files"])
    assert_same(upload["model"], stripped)
    card = upload["card"]
    assert {"hf_prune", "pruned", "filter-pruning"} <= set(card.data.tags)
    assert card.data.base_model == "microsoft/resnet-50" and card.data.library_name == "transformers"
    text = card.text
    x = torch.randn(1, *input_size(dense))  # counted here on the real models, not as the card's writer does
    flops, params = [_flops(m, x) for m in (dense, stripped)], [_params(m) for m in (dense, stripped)]
    assert f"| FLOPs | {flops[0] / 1e9:.3f} G | {flops[1] / 1e9:.3f} G |" in text
    assert f"| Parameters | {params[0] / 1e6:.3f} M | {params[1] / 1e6:.3f} M |" in text
    widths = [sum(c.out_channels for c in m.resnet.encoder.stages[0].modules() if isinstance(c, nn.Conv2d))
              for m in (dense, stripped)]  # the card's "width per stage": output channels of its convs
    assert widths[1] < widths[0] and f"| `resnet.encoder.stages.0` | {widths[0]} | {widths[1]} |" in text
    assert "Width per stage" in text
    assert '"pruning_init": 0.5' in text and "model: hf_resnet" in text
    assert 'AutoModelForImageClassification.from_pretrained("me/resnet-pruned")' in text


def test_push_masked_timm_model_strips_a_copy(hub: list[dict[str, Any]]) -> None:
    model = randomize_norms(timm.create_model("test_resnet", num_classes=10)).eval()
    controller = hf_prune.create_pruning_controller(model, {"pruning_init": 0.5},
                                                    example_inputs=torch.randn(1, 3, 32, 32))
    with pytest.raises(PrunedModelError, match="cannot push a model whose pruning masks are still active"):
        push_to_hub(model, "me/test-resnet")
    assert not hub
    push_to_hub(model, "me/test-resnet", controller=controller)
    uploaded = hub[0]["model"]
    assert sum(p.numel() for p in uploaded.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(uploaded(x), model(x))  # the masked model computes what the stripped one does
    card = hub[0]["card"]
    assert card.data.library_name == "timm" and card.data.base_model == model.pretrained_cfg["hf_hub_id"]
    assert 'hf_prune.from_pretrained("me/test-resnet")' in card.text


def test_model_statistics_agree_with_the_controller() -> None:
    _, controller, stripped = pruned("timm_convnext")
    stats = model_statistics(stripped)
    recorded = controller.statistics()
    assert stats["params"]["after"] == sum(p.numel() for p in stripped.parameters())
    assert stats["flops"]["after"] / stats["flops"]["before"] == pytest.approx(
        recorded.flops_after / recorded.flops_before, rel=0.02)
    assert stats["pruning_statistics"]["filters_after"] == recorded.filters_after
    assert any(s["after"] < s["before"] for s in stats["stages"])
    json.dumps(stats)


@pytest.mark.parametrize("name, stage", [
    ("layer1.0.conv1", "layer1"), ("features.denseblock2.denselayer1.conv1", "features.denseblock2"),
    ("stages.0.blocks.1.conv_dw", "stages.0"), ("resnet.encoder.stages.3.layers.0.shortcut.convolution",
                                                "resnet.encoder.stages.3"),
    ("mobilenet_v2.conv_1x1.convolution", "mobilenet_v2.conv_1x1"), ("head.fc", "head"), ("fc", "fc"),
])
def test_stage_names(name: str, stage: str) -> None:
    assert _stage(name) == stage


def test_recipe_dict_is_rendered_as_yaml(hub: list[dict[str, Any]]) -> None:
    _, _, stripped = pruned("hf_vit")
    recipe = {"model": "hf_vit", "pruning": {"params": {"pruning_flops_target": 0.5}}}
    push_to_hub(stripped, "me/vit", recipe=recipe)
    text = hub[0]["card"].text
    block = text.split("## Recipe\n\n```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(block) == recipe
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(logits(hub[0]["model"], x), logits(stripped, x))


def test_pruning_trainer_push_to_hub(hub: list[dict[str, Any]], tmp_path: Path) -> None:
    from hf_prune import PruningTrainer
    from scripts.common import digits, tiny_resnet, training_args

    data = digits(limit=64)
    args = training_args(tmp_path, num_train_epochs=2, hub_model_id="me/tiny-pruned")
    trainer = PruningTrainer(tiny_resnet(), args, train_dataset=data.train,
                             pruning_config={"params": {"pruning_target": 0.5, "pruning_steps": 1, "channel_multiple": 4}})
    trainer.train()
    # Trainer.push_to_hub's signature: commit_message first, then blocking, token, revision
    trainer.push_to_hub("Pruned to half", True, None, "v1", recipe={"pruning": {"params": {"pruning_target": 0.5}}})
    upload = hub[-1]
    assert (upload["repo_id"], upload["commit_message"], upload["revision"]) == ("me/tiny-pruned", "Pruned to half", "v1")
    assert "README.md" in upload["files"]
    small = trainer.strip_model()
    assert_same(upload["model"], small)
    assert {"hf_prune", "pruned", "filter-pruning"} <= set(upload["card"].data.tags)
    assert "pruning_target: 0.5" in upload["card"].text
    trainer.args.push_to_hub = True  # Trainer.save_model pushes through it
    trainer.save_model(tmp_path / "final")
    assert hub[-1]["commit_message"] == "Model save" and len(hub) == 2
    assert trainer.push_to_hub(blocking=False).result() == "https://huggingface.co/me/tiny-pruned/commit/0"
