"""Attention heads recognized from the trace, for any implementation: pruned whole, attributes refreshed,
reloaded; refused with a reason where the strip cannot be exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import hf_prune
from hf_prune.graph.adapters import int_attributes
from hf_prune.graph.reshapes import ATTR as RESIZED, SCALARS as PINNED
from hf_prune.graph.surgery import resize_to_spec, shape_spec
from hf_prune.integrations.serialization import from_pretrained, save_pretrained

from conftest import randomize_norms
from models import HEAD_MODELS, build, first


def _randomized(name: str) -> tuple[nn.Module, object, object]:
    """A model whose norms and (zero-initialised) per-head position-bias tables are random."""
    model, inputs, logits = build(name)
    randomize_norms(model)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "relative_position_bias_table" in pname:
                p.normal_()
    return model, inputs, logits


def _controller(model: nn.Module, inputs) -> hf_prune.FilterPruningController:
    return hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=first(inputs))


def _head_groups(ctrl) -> dict[int, object]:
    return {gid: g for gid, g in ctrl.groups.items() if g.attention is not None}


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_heads_are_pruned_exactly(name):
    model, inputs, logits = _randomized(name)
    ctrl = _controller(model, inputs)
    heads = _head_groups(ctrl)
    attention = {g.attention for g in heads.values()}
    assert heads and len(attention) == len(heads), f"{name}: one head group per attention module expected"
    ctrl.set_pruning_level({gid: 0.5 for gid in heads})
    with torch.no_grad():
        masked = logits(model, inputs)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = logits(stripped, inputs)
    assert (out - masked).abs().max() <= 1e-5 * masked.abs().max()
    dense_modules, modules = dict(model.named_modules()), dict(stripped.named_modules())
    for g in heads.values():
        kept = g.size - g.size // 2
        before, after = int_attributes(dense_modules[g.attention]), int_attributes(modules[g.attention])
        # the head count and the attention width follow the weights, the per-head width stays
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert any(v == (g.size, kept) for v in changed.values()), f"{g.attention}: {changed}"
        assert all(new * g.size == old * kept for old, new in changed.values()), f"{g.attention}: {changed}"
    assert sum(p.numel() for p in stripped.parameters()) == round(ctrl.current_params)


@pytest.mark.parametrize("name", ["hf_dinov2", "hf_swin", "hf_beit", "timm_beit", "hf_levit", "hf_siglip"])
def test_pruned_heads_reload(tmp_path: Path, name):
    model, inputs, logits = _randomized(name)
    ctrl = _controller(model, inputs)
    ctrl.set_pruning_level({gid: 0.5 for gid in _head_groups(ctrl)})
    stripped = ctrl.strip_model(model, do_copy=True)
    save_pretrained(stripped, tmp_path / "model")
    loaded = from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, inputs), logits(stripped, inputs), rtol=0, atol=0)
    assert {n: int_attributes(m) for n, m in loaded.named_modules()} == \
        {n: int_attributes(m) for n, m in stripped.named_modules()}


def test_only_modules_whose_code_asks_for_a_wrong_size_are_resized():
    """BEiT merges its heads to the input's width: its attention modules get the resizing hook; timm's ViT
    sizes its reshapes from attributes the strip updates, and runs with no hook at all."""
    for name, expected in [("timm_beit", {"blocks.0.attn", "blocks.1.attn"}), ("test_vit", set())]:
        model, inputs, _ = _randomized(name)
        ctrl = _controller(model, inputs)
        ctrl.set_pruning_level(0.5)
        stripped = ctrl.strip_model(model, do_copy=True)
        assert {n for n, m in stripped.named_modules() if getattr(m, RESIZED, None)} == expected, name
        assert not any(getattr(m, PINNED, None) for m in stripped.modules()), name  # their numbers are right


def test_a_number_computed_from_a_width_keeps_its_dense_value():
    """torchvision's Swin scales its queries by ``(C // num_heads) ** -0.5``, ``C`` its input's width: with heads
    removed the code computes another number, which the stripped module replaces by the dense one (refused by
    the strip check before); the shape spec carries it to a reload."""
    from torchvision.models import SwinTransformer

    def build() -> nn.Module:
        torch.manual_seed(0)
        return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
                               num_classes=10).eval()

    model, x = build(), torch.randn(2, 3, 32, 32)
    randomize_norms(model)
    ctrl = _controller(model, x)
    heads = _head_groups(ctrl)
    assert {g.attention for g in heads.values()} == {"features.1.0.attn", "features.3.0.attn"}
    ctrl.set_pruning_level({gid: 0.5 for gid in heads})
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        torch.testing.assert_close(stripped(x), masked, rtol=1e-5, atol=1e-5)
    spec = shape_spec(stripped, build())
    assert set(spec["scalars"]) == {"features.1.0.attn", "features.3.0.attn"}
    fresh = resize_to_spec(build(), spec)
    fresh.load_state_dict(stripped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), masked, rtol=1e-5, atol=1e-5)


def test_a_resized_model_compiles_without_graph_breaks():
    """The resizing hook is plain Python state that ``torch.compile`` traces: same outputs, no graph break."""
    model, inputs, logits = _randomized("timm_beit")
    ctrl = _controller(model, inputs)
    ctrl.set_pruning_level(0.5)
    stripped = ctrl.strip_model(model, do_copy=True).eval()
    assert any(getattr(m, RESIZED, None) for m in stripped.modules())
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(stripped, backend="aot_eager")(inputs), stripped(inputs))
        assert torch._dynamo.explain(stripped)(inputs).graph_break_count == 0


def test_a_weight_used_by_its_parents_code_is_masked_there():
    """timm BEiT's attention calls ``F.linear(x, self.qkv.weight, bias)``, never ``qkv``'s own forward: the
    mask of the embedding channels ``qkv`` consumes must apply during the attention's forward."""
    model, inputs, logits = _randomized("timm_beit")
    params = {"pruning_target": 0.5, "prune_first_conv": True, "prune_downsample_convs": True}
    ctrl = hf_prune.create_pruning_controller(model, {"params": params},  # the patch embedding sets the width
                                              example_inputs=first(inputs))
    residual = [gid for gid, g in ctrl.groups.items() if "blocks.0.attn.proj" in g.producers]
    assert residual
    ctrl.set_pruning_level({residual[0]: 0.5})
    with torch.no_grad():
        masked = logits(model, inputs)
        stripped = logits(ctrl.strip_model(model, do_copy=True), inputs)
    torch.testing.assert_close(stripped, masked, rtol=1e-4, atol=1e-5 * float(masked.abs().max()))


class _WidthScaledAttention(nn.Module):
    """Heads merged back to the input's width, attention scaled by ``(C // heads) ** -0.5`` with ``C`` the
    input's width, passed as SDPA's ``scale``: the strip resizes the reshapes and keeps the numbers a tensor is
    multiplied or divided by (torchvision's Swin), not an argument computed from a width."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, scale=(c // self.num_heads) ** -0.5)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, c)).mean(1))


def test_heads_that_cannot_be_stripped_are_refused_with_a_reason():
    analysis = hf_prune.analyze_model(_WidthScaledAttention().eval(), torch.randn(1, 5, 32))
    heads = [g for g in analysis.groups if g.attention is not None]
    assert heads and not any(g.prunable for g in heads)
    assert any("the heads of <model> cannot be removed: the stripped model's outputs differ" in r
               for g in heads for r in g.reasons), [g.reasons for g in heads]
    assert any(g.prunable for g in analysis.groups if g.producers == ["proj"])  # the rest still prunes


def test_fused_qkv_with_concatenated_biases_is_split_into_heads():
    """timm BEiT: q/k/v biases concatenated (k's a zero buffer) and the fused output reshaped to 3 × heads ×
    head_dim; the heads are found and pruned."""
    model = timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                              num_heads=4, num_classes=10).eval()
    analysis = hf_prune.analyze_model(model, torch.randn(1, 3, 32, 32))
    heads = [g for g in analysis.groups if g.attention is not None]
    assert [g.attention for g in heads] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(g.size == 4 and g.prunable and {"blocks.0.attn.qkv", "blocks.1.attn.qkv"} & set(g.producers)
               for g in heads)
    assert not any("incompatible" in r for g in analysis.groups for r in g.reasons)


class _GroupedQueryAttention(nn.Module):
    """4 query heads sharing 2 key/value heads: through SDPA's ``enable_gqa``, or repeated (transformers'
    ``repeat_kv``: expand + reshape) before an eager attention."""

    def __init__(self, repeat_kv: bool, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.repeat_kv, self.heads, self.kv_heads, self.head_dim = repeat_kv, heads, kv_heads, dim // heads
        self.num_key_value_groups = heads // kv_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.repeat_kv:
            k, v = (t[:, :, None].expand(b, self.kv_heads, self.num_key_value_groups, n, self.head_dim)
                    .reshape(b, self.heads, n, self.head_dim) for t in (k, v))
            y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, -1)).relu().mean(1))


@pytest.mark.parametrize("repeat_kv", [False, True])
def test_grouped_query_attention_is_refused_with_a_reason(repeat_kv):
    analysis = hf_prune.analyze_model(_GroupedQueryAttention(repeat_kv).eval(), torch.randn(1, 5, 32))
    q_groups = [g for g in analysis.groups if "q" in g.producers]
    assert q_groups and not any(g.prunable for g in q_groups)
    reason = "attention heads are split into groups" if repeat_kv else "grouped-query attention (4 query heads, 2 key"
    assert any(reason in r for g in q_groups for r in g.reasons), [g.reasons for g in q_groups]
    assert any(g.prunable for g in analysis.groups if g.producers == ["proj"])  # the rest still prunes


class _GroupedLinear(nn.Module):
    """A projection reshaped into 4 × 16 and mixed per group by a shared weight: a reshape split, no heads."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 64)
        self.mix = nn.Parameter(torch.randn(16, 16))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.fc(x).view(x.shape[0], 4, 16) @ self.mix).flatten(1)
        return self.head(y.relu())


def test_a_reshape_that_is_not_a_head_split_is_refused_with_a_reason():
    analysis = hf_prune.analyze_model(_GroupedLinear().eval(), torch.randn(1, 32))
    fc = [g for g in analysis.groups if g.producers == ["fc"]]
    assert fc and not any(g.prunable or g.attention is not None for g in fc)
    assert any("split by a reshape in <model> (_GroupedLinear), which is not a split into attention heads" in r
               for g in fc for r in g.reasons), [g.reasons for g in fc]


def test_an_attribute_the_dense_model_lacks_is_not_recorded(tmp_path: Path):
    """Integer attributes set after construction (a counter a forward sets) are not replayed on reload."""
    model, inputs, logits = _randomized("hf_dinov2")
    ctrl = _controller(model, inputs)
    ctrl.set_pruning_level({gid: 0.5 for gid in _head_groups(ctrl)})
    stripped = ctrl.strip_model(model, do_copy=True)
    stripped.dinov2.encoder.calls = 3
    save_pretrained(stripped, tmp_path / "model")
    loaded = from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, inputs), logits(stripped, inputs), rtol=0, atol=0)
