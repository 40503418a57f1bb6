"""The architecture matrix every structural test runs over (random init, no downloads)."""

from __future__ import annotations

from typing import Any, Callable

import timm
import torch
import transformers
from transformers import (
    BeitConfig, BeitForImageClassification, CLIPConfig, CLIPForImageClassification, ConvNextConfig,
    ConvNextForImageClassification, Data2VecVisionConfig, Data2VecVisionForImageClassification, DeiTConfig,
    DeiTForImageClassification, Dinov2Config, Dinov2ForImageClassification, EfficientNetConfig,
    EfficientNetForImageClassification, FocalNetConfig, FocalNetForImageClassification, IJepaConfig,
    IJepaForImageClassification, LevitConfig,
    LevitForImageClassification, MobileNetV2Config, MobileNetV2ForImageClassification, MobileViTConfig, MobileViTForImageClassification, PvtConfig,
    PoolFormerConfig, PoolFormerForImageClassification, PvtForImageClassification, RegNetConfig, RegNetForImageClassification, ResNetConfig, ResNetForImageClassification,
    SiglipConfig, SiglipForImageClassification, SwinConfig, SwinForImageClassification, Swinv2Config,
    Swinv2ForImageClassification, ViTConfig, ViTForImageClassification, ViTMSNConfig, ViTMSNForImageClassification,
)

TIMM_MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "seresnext26d_32x4d", "mobilenetv2_100", "mobilenetv3_large_100",
    "efficientnet_b0", "regnety_004", "densenet121", "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
]
TIMM_TEST_MODELS = [n for n in timm.list_models("test_*")]

_VIT_SIZES = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128)

HF_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "hf_resnet": lambda: ResNetForImageClassification(ResNetConfig(
        embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1], layer_type="bottleneck", num_labels=10)),
    "hf_convnext": lambda: ConvNextForImageClassification(ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10)),
    "hf_vit": lambda: ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10)),
    "hf_mobilenet_v2": lambda: MobileNetV2ForImageClassification(MobileNetV2Config(
        image_size=64, depth_multiplier=0.35, num_labels=10)),
    "hf_regnet": lambda: RegNetForImageClassification(RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], groups_width=8, num_labels=10)),
    "hf_efficientnet": lambda: EfficientNetForImageClassification(EfficientNetConfig(
        image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10)),
    "hf_beit": lambda: BeitForImageClassification(BeitConfig(
        **_VIT_SIZES, use_relative_position_bias=True, num_labels=10)),
    "hf_data2vec_vision": lambda: Data2VecVisionForImageClassification(Data2VecVisionConfig(
        **_VIT_SIZES, use_shared_relative_position_bias=True, num_labels=10)),
    "hf_dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(**_VIT_SIZES, num_labels=10)),
    "hf_vit_msn": lambda: ViTMSNForImageClassification(ViTMSNConfig(**_VIT_SIZES, num_labels=10)),
    "hf_swin": lambda: SwinForImageClassification(SwinConfig(
        image_size=32, patch_size=4, embed_dim=32, depths=[1, 2], num_heads=[2, 4], window_size=4, num_labels=10)),
    "hf_swinv2": lambda: Swinv2ForImageClassification(Swinv2Config(
        image_size=32, patch_size=4, embed_dim=32, depths=[1, 2], num_heads=[2, 4], window_size=4, num_labels=10)),
    "hf_deit": lambda: DeiTForImageClassification(DeiTConfig(**_VIT_SIZES, num_labels=10)),
    "hf_ijepa": lambda: IJepaForImageClassification(IJepaConfig(**_VIT_SIZES, num_labels=10)),
    "hf_pvt": lambda: PvtForImageClassification(PvtConfig(image_size=32, num_labels=10)),
    "hf_mobilevit": lambda: MobileViTForImageClassification(MobileViTConfig(image_size=32, num_labels=10)),
    "hf_levit": lambda: LevitForImageClassification(LevitConfig(
        image_size=64, hidden_sizes=[32, 64, 96], num_attention_heads=[2, 4, 6], depths=[1, 1, 1],
        key_dim=[16, 16, 16], num_labels=10)),
    "hf_clip": lambda: CLIPForImageClassification(CLIPConfig(
        vision_config=_VIT_SIZES, text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64), num_labels=10)),
    "hf_siglip": lambda: SiglipForImageClassification(SiglipConfig(
        vision_config=_VIT_SIZES, text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64), num_labels=10)),
    # splits sized from the input's width; patch embeddings downsampling the residual stream
    "hf_focalnet": lambda: FocalNetForImageClassification(FocalNetConfig(
        embed_dim=16, depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 128], image_size=64, num_labels=10)),
    # GroupNorm with one group over the residual stream
    "hf_poolformer": lambda: PoolFormerForImageClassification(PoolFormerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], image_size=64, num_labels=10)),
}
TIMM_SMALL: dict[str, Callable[[], torch.nn.Module]] = {
    "timm_beit": lambda: timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                                           num_heads=4, num_classes=10),
    "timm_eva02": lambda: timm.create_model("eva02_tiny_patch14_224", img_size=32, patch_size=8, embed_dim=64,
                                            depth=2, num_heads=4, num_classes=10),
    "timm_swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, embed_dim=32,
                                           depths=(1, 1), num_heads=(2, 4), window_size=4, num_classes=10),
    "timm_cait": lambda: timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                                           num_heads=4, depth_token_only=1, num_classes=10),
    # weight-standardized convs + GroupNorm (BiT), GroupNorm, equal chunks (Res2Net): half the widths
    "timm_bit": lambda: timm.create_model("resnetv2_50x1_bit", channels=(128, 256, 512, 1024), stem_chs=32,
                                          num_classes=10),
    "timm_resnetv2_gn": lambda: timm.create_model("resnetv2_50d_gn", layers=[1, 1, 1, 1],
                                                  channels=(128, 256, 512, 1024), stem_chs=64, num_classes=10),
    "timm_res2net": lambda: timm.create_model("res2net50_26w_4s", layers=[1, 1, 1, 1], num_classes=10),
}
"""timm architectures at a small size (32×32 images)."""
HEAD_MODELS = ["hf_vit", "hf_beit", "hf_data2vec_vision", "hf_dinov2", "hf_vit_msn", "hf_swin", "hf_swinv2",
               "hf_deit", "hf_ijepa", "hf_pvt", "hf_mobilevit", "hf_clip", "hf_siglip", "hf_levit", "timm_swin", "timm_beit",
               "timm_cait", "timm_eva02", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "test_vit"]
"""Architectures whose attention heads are pruned (timm BEiT, CaiT, and transformers 4's CLIP and SigLIP merge
their heads to the input's width: the strip resizes that reshape)."""

ALL_MODELS = TIMM_MODELS + TIMM_TEST_MODELS + list(HF_MODELS)


def build(name: str) -> tuple[torch.nn.Module, Any, Callable[[torch.nn.Module, Any], torch.Tensor]]:
    """(model in eval mode, example inputs of batch 2, a function returning the logits)."""
    if name in HF_MODELS:
        model = HF_MODELS[name]().eval()
        config = getattr(model.config, "vision_config", model.config)
        size = getattr(config, "image_size", 64)
        inputs = {"pixel_values": torch.randn(2, 3, size, size)}
        return model, inputs, lambda m, x: m(**x).logits
    if name in TIMM_SMALL:
        return TIMM_SMALL[name]().eval(), torch.randn(2, 3, 32, 32), lambda m, x: m(x)
    kwargs: dict[str, Any] = {"num_classes": 10}
    if name.startswith(("vit_", "deit_")):
        kwargs["img_size"] = 64
    model = timm.create_model(name, **kwargs).eval()
    size = model.pretrained_cfg["input_size"][1:] if name.startswith("test_") else (64, 64)
    return model, torch.randn(2, 3, *size), lambda m, x: m(x)


def first(inputs: Any) -> Any:
    """Batch-1 slice of example inputs (what analysis traces with)."""
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    return inputs[:1]
