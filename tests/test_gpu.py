"""The GPU paths: analysis, masks and strip on CUDA, and the three training integrations there.

Marked ``gpu``: skipped without CUDA (CI is CPU-only). Run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import hf_prune
from hf_prune.graph.groups import PruningPolicy, build_groups
from hf_prune.graph.trace import trace_model
from conftest import randomize_norms
from models import build, first

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
CONFIG = {"params": {"pruning_target": 0.5}}
TRAIN_CONFIG = {"params": {"schedule": "baseline", "pruning_target": 0.5, "num_init_steps": 1, "channel_multiple": 4}}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 comparisons on CUDA need full-precision matmuls (TF32 would blur them)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(name: str = "resnet18", **kwargs) -> nn.Module:
    extra = {"img_size": 64} if name.startswith("vit") else {}
    return randomize_norms(timm.create_model(name, num_classes=10, **extra, **kwargs)).eval()


def _structure(groups) -> list[tuple]:
    return [(tuple(sorted((m.param, m.dim, m.role) for m in g.members)), g.size, g.prunable) for g in groups]


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_trace_on_cuda_matches_cpu(name, dtype):
    """The trace itself, run where the model lives (cuDNN BatchNorm, flash attention, channels_last):
    the canonical op table makes it find what the CPU trace finds."""
    x = torch.randn(1, 3, 64, 64)
    cpu = _model(name)
    reference = build_groups(trace_model(cpu, x), cpu, PruningPolicy())
    gpu = _model(name).to(CUDA, dtype)
    xg = x.to(CUDA, dtype)
    if name != "vit_tiny_patch16_224":
        gpu, xg = gpu.to(memory_format=torch.channels_last), xg.contiguous(memory_format=torch.channels_last)
    got = build_groups(trace_model(gpu, xg), gpu, PruningPolicy())
    assert _structure(got) == _structure(reference)
    assert any(g.prunable for g in got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_controller_on_cuda(dtype):
    cpu_model = _model()
    model = copy.deepcopy(cpu_model).to(CUDA, dtype).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device=CUDA, dtype=dtype)
    cpu_ctrl = hf_prune.create_pruning_controller(cpu_model, CONFIG, example_inputs=x[:1].float().cpu())
    ctrl = hf_prune.create_pruning_controller(model, CONFIG, example_inputs=x[:1])
    assert _structure(ctrl.analysis.groups) == _structure(cpu_ctrl.analysis.groups)
    ctrl.set_pruning_level(0.5)
    cpu_ctrl.set_pruning_level(0.5)
    masks, cpu_masks = ctrl.group_masks(), cpu_ctrl.group_masks()
    if dtype == torch.float32:  # same weights, same importance: the same filters
        assert all(torch.equal(masks[g], cpu_masks[g]) for g in masks)
    assert ctrl.current_flops == cpu_ctrl.current_flops
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = stripped(x)
    assert next(stripped.parameters()).device.type == "cuda"
    assert sum(p.numel() for p in stripped.parameters()) == round(ctrl.current_params)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (out.float() - masked.float()).abs().max() <= tol * masked.float().abs().max()


def _transformer_model(name: str) -> tuple[nn.Module, object, object]:
    """(model, inputs of batch 2, logits function) for ``test_transformer_constructs_on_cuda``."""
    if not name.startswith("torchvision"):
        return build(name)
    from torchvision.models import SwinTransformer, VisionTransformer

    torch.manual_seed(0)
    if name == "torchvision_vit":
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                                  num_classes=10)
    else:
        model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
                                num_classes=10)
    return model.eval(), torch.randn(2, 3, 32, 32), lambda m, x: m(x)


def _to(inputs, device: torch.device):
    return {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)


@pytest.mark.parametrize("name", ["torchvision_vit", "torchvision_swin", "hf_siglip", "timm_beit", "hf_focalnet",
                                  "hf_poolformer"])
def test_transformer_constructs_on_cuda(name):
    """Heads and widths where the model lives on CUDA: ``nn.MultiheadAttention`` (a fused kernel at inference
    there), numbers pinned to their dense value (Swin), a weightless norm and an attention pool (SigLIP), resized
    reshapes (BEiT) and splits (FocalNet), a one-group GroupNorm (PoolFormer): the groups found on CPU, and an
    exact strip on CUDA."""
    model, inputs, logits = _transformer_model(name)
    randomize_norms(model)
    params = {"pruning_target": 0.5, "prune_first_conv": True, "prune_downsample_convs": True}
    cpu_ctrl = hf_prune.create_pruning_controller(copy.deepcopy(model), {"params": params},
                                                  example_inputs=first(inputs))
    model, inputs = model.to(CUDA), _to(inputs, CUDA)
    ctrl = hf_prune.create_pruning_controller(model, {"params": params}, example_inputs=first(inputs))
    assert _structure(ctrl.analysis.groups) == _structure(cpu_ctrl.analysis.groups)
    assert ctrl.groups and (name in ("hf_focalnet", "hf_poolformer") or any(g.attention for g in ctrl.groups.values()))
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        masked = logits(model, inputs)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = logits(stripped, inputs)
    assert sum(p.numel() for p in stripped.parameters()) == round(ctrl.current_params)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()


def test_nncf_imagenet_recipe_prunes_resnet50_on_cuda():
    import yaml
    from pathlib import Path

    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "resnet50_imagenet.yaml").read_text())
    model = timm.create_model("resnet50", num_classes=1000).to(CUDA)
    ctrl = hf_prune.create_pruning_controller(model, recipe["pruning"], example_inputs=torch.randn(1, 3, 224, 224))
    assert len(ctrl.groups) >= 16
    for _ in range(20):
        ctrl.scheduler.epoch_step()
    assert ctrl.compression_stage() == 2
    assert 0.3 < 1 - ctrl.current_flops / ctrl.analysis.dense_flops < 0.7


class _Images(Dataset):
    def __init__(self, n: int = 64, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _args(tmp_path, **overrides):
    from transformers import TrainingArguments

    defaults = dict(num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-2, logging_strategy="epoch",
                    save_strategy="no", report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0)
    return TrainingArguments(str(tmp_path), **{**defaults, **overrides})


def _check_pruned_on_cuda(ctrl, model: nn.Module, x: torch.Tensor) -> None:
    assert ctrl.groups and ctrl.levels_nonzero
    assert next(model.parameters()).device.type == "cuda"
    assert ctrl.compression_rate > 0.3
    model.eval()
    with torch.no_grad():
        x = x.to(CUDA)
        masked = model(x)
        out = ctrl.strip_model(model, do_copy=True)(x)
    masked, out = (o.logits if hasattr(o, "logits") else o for o in (masked, out))
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pruning_trainer_on_cuda(tmp_path, precision):
    model = _model("resnet18").to(memory_format=torch.channels_last)
    trainer = hf_prune.PruningTrainer(model=model, args=_args(tmp_path, **{precision: True},
                                                             gradient_accumulation_steps=2),
                                      pruning_config=TRAIN_CONFIG, train_dataset=_Images())
    trainer.train()
    ctrl = trainer.controller
    assert ctrl.model is model
    _check_pruned_on_cuda(ctrl, model, _Images(4).x)


def test_pruning_callback_with_a_plain_trainer_on_cuda(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification, Trainer

    model = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                                                      layer_type="bottleneck", num_labels=10))
    callback = hf_prune.PruningCallback(TRAIN_CONFIG)
    trainer = Trainer(model=model, args=_args(tmp_path, bf16=True), train_dataset=_Images(), callbacks=[callback])
    callback.install(trainer)
    trainer.train()
    _check_pruned_on_cuda(callback.controller, model, _Images(4).x)


def test_accelerated_pruner_on_cuda_compiled(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16")
    model = _model("resnet18").to(memory_format=torch.channels_last)
    loader = DataLoader(_Images(), batch_size=16, shuffle=True)
    pruner = hf_prune.AcceleratedPruner(accelerator, model, {**TRAIN_CONFIG, "pruning_init": 0.2},
                                        data_loader=loader)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    compiled = torch.compile(model)
    compiled, optimizer, loader = accelerator.prepare(compiled, optimizer, loader)
    model.train()
    for _ in range(3):
        pruner.epoch_step()
        for batch in loader:
            loss = nn.functional.cross_entropy(compiled(batch["pixel_values"]), batch["labels"]) + pruner.loss()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()
    x = _Images(4).x.to(CUDA)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):  # the compiled model follows the masks
        eager, fast = model(x).float(), compiled(x).float()
    assert (fast - eager).abs().max() <= 3e-2 * eager.abs().max()
    _check_pruned_on_cuda(pruner.controller, model, x)


def test_bad_device_placements_on_cuda():
    model = _model()
    model.fc.to(CUDA)  # split across cpu and cuda
    with pytest.raises(hf_prune.AnalysisError, match=r"split across devices \(cpu, cuda:0\)"):
        hf_prune.create_pruning_controller(model, CONFIG, example_inputs=torch.randn(1, 3, 64, 64))
    half = _model().to(CUDA, torch.float16)  # fp16 model, fp32 inputs on the CPU: analysed all the same
    ctrl = hf_prune.create_pruning_controller(half, CONFIG, example_inputs=torch.randn(1, 3, 64, 64))
    assert ctrl.groups
    ctrl.set_pruning_level(0.5)
    with torch.no_grad():
        assert half(torch.randn(2, 3, 64, 64, device=CUDA, dtype=torch.float16)).isfinite().all()


def test_training_step_does_not_synchronize_with_the_host():
    """Masks, the controller's loss and the schedule step add no host-device synchronisation per step."""
    model = _model().to(CUDA)
    config = {"params": {**CONFIG["params"], "regularization_weight": 1e-3}}
    ctrl = hf_prune.create_pruning_controller(model, config, example_inputs=torch.randn(1, 3, 64, 64))
    ctrl.set_pruning_level(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, 64, 64, device=CUDA)
    y = torch.randint(0, 10, (8,), device=CUDA)
    model.train()

    def step():
        loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ctrl.scheduler.step()

    step()  # first step places the masks on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ctrl.loss().item() > 0
