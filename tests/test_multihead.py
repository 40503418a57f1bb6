"""nn.MultiheadAttention: heads, query/key/value widths and output width pruned exactly, FLOPs counted, refused
with a reason where the strip cannot be exact."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import VisionTransformer

import hf_prune
from hf_prune.graph.multihead import PrunedMultiheadAttention, PrunedTransformerEncoderLayer
from hf_prune.graph.reshapes import SCALARS as PINNED

from conftest import randomize_norms


def _as_pruned_class(mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    twin = copy.deepcopy(mha)
    twin.__class__ = PrunedMultiheadAttention
    return twin


OPTIONS = [dict(batch_first=bf, kdim=kd, bias=b, add_bias_kv=kv, add_zero_attn=z)
           for bf, kd, b, kv, z in itertools.product([False, True], [None, 12], [True, False], [False, True],
                                                     [False, True])]


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_pruned_class_computes_what_torch_computes(options):
    """At dense widths the stripped module's forward is torch's, for every option and call."""
    torch.manual_seed(0)
    kdim = options.pop("kdim")
    mha = nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, **options).eval()
    twin = _as_pruned_class(mha)
    n, length, source = 3, 5, 7
    q = torch.randn(n, length, 16)
    kv = torch.randn(n, source, kdim or 16)
    if not options["batch_first"]:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    bool_mask = torch.rand(length, source) > 0.7
    bool_mask[:, 0] = False  # every query attends to something
    padding = torch.zeros(n, source, dtype=torch.bool)
    padding[0, -2:] = True
    calls = [
        dict(), dict(need_weights=False), dict(average_attn_weights=False), dict(attn_mask=bool_mask),
        dict(attn_mask=torch.randn(length, source), need_weights=False), dict(key_padding_mask=padding),
        dict(attn_mask=torch.randn(n * 4, length, source), key_padding_mask=padding, average_attn_weights=False),
        dict(attn_mask=torch.triu(torch.ones(length, source, dtype=torch.bool), 1), is_causal=True, need_weights=False),
    ]
    for kwargs in calls:
        expected = mha(q, kv, kv, **kwargs)
        got = twin(q, kv, kv, **kwargs)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6, msg=str(kwargs))
        assert (got[1] is None) == (expected[1] is None)
        if got[1] is not None:
            torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6, msg=str(kwargs))
    if kdim is None:  # self-attention (one projection), batched and unbatched (L, E)
        single = q[:, 0] if not options["batch_first"] else q[0]
        for x in (q, single):
            torch.testing.assert_close(twin(x, x, x)[0], mha(x, x, x)[0], rtol=1e-5, atol=1e-6)


class _Pool(nn.Module):
    """SigLIP's attention pool: a learned query attends over the tokens (need_weights left at its default)."""

    def __init__(self, width: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.num_heads = heads  # as SigLIP-2's pool, which repeats its mask this many times
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor, use_weights: bool = False) -> torch.Tensor:
        h = self.embed(x)
        pooled, weights = self.attention(self.probe.expand(len(x), -1, -1), h, h)
        out = self.fc(self.norm(pooled[:, 0]))
        return out + weights.sum() if use_weights else out


class _CrossWidths(nn.Module):
    """Separate query/key/value widths, a key/value bias and a zero key, sequence-first inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 32)
        self.kv = nn.Linear(8, 24)
        self.attention = nn.MultiheadAttention(32, 4, kdim=24, vdim=24, add_bias_kv=True, add_zero_attn=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, kv = self.q(x).transpose(0, 1), self.kv(x).transpose(0, 1)
        return self.fc(self.attention(q, kv, kv, need_weights=False)[0].mean(0))


class _Encoder(nn.Module):
    """torch's own transformer layers (a fused kernel at inference), around nn.MultiheadAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


def _small_torchvision_vit() -> nn.Module:
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


MODELS = {
    "torchvision_vit": (_small_torchvision_vit, lambda: torch.randn(2, 3, 32, 32)),
    "attention_pool": (_Pool, lambda: torch.randn(2, 6, 8)),
    "cross_widths": (_CrossWidths, lambda: torch.randn(2, 6, 8)),
    "transformer_encoder": (_Encoder, lambda: torch.randn(2, 6, 8)),
}


@pytest.mark.parametrize("heads_level", [0.25, 0.5])
@pytest.mark.parametrize("name", MODELS)
def test_heads_and_widths_are_stripped_exactly(name, heads_level):
    torch.manual_seed(0)
    build, inputs = MODELS[name]
    model, x = build().eval(), inputs()
    randomize_norms(model)
    # torchvision's ViT: its patch embedding is the first conv, with a stride
    params = {"pruning_target": 0.5, "prune_first_conv": True, "prune_downsample_convs": True}
    ctrl = hf_prune.create_pruning_controller(model, {"params": params}, example_inputs=x[:1])
    attention = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    heads = {g.attention for g in ctrl.groups.values() if g.attention is not None}
    assert heads == attention
    widths = [g for g in ctrl.groups.values() if g.attention is None]
    assert any(m.param.endswith("in_proj_weight") or m.param.endswith("_proj_weight")
               for g in widths for m in g.members if m.role == "in"), "the inputs of the attention are pruned"
    # heads and the other widths pruned apart: torch's own forward (and fused kernel) could no longer compute it
    widths_level = 0.75 - heads_level
    ctrl.set_pruning_level({gid: heads_level if g.attention else widths_level for gid, g in ctrl.groups.items()})
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        out = stripped(x)
    torch.testing.assert_close(out, masked, rtol=1e-5, atol=1e-5 * masked.abs().max().item())
    for name_ in attention:
        m = stripped.get_submodule(name_)
        assert type(m) is PrunedMultiheadAttention and isinstance(m, nn.MultiheadAttention)
        dense = model.get_submodule(name_)
        assert m.num_heads == dense.num_heads * (1 - heads_level) and m.num_heads * m.head_dim == m.out_proj.in_features
        parent = stripped.get_submodule(name_.rpartition(".")[0])
        assert getattr(parent, "num_heads", m.num_heads) == m.num_heads  # the pool's, torchvision's EncoderBlock's
    assert sum(p.numel() for p in stripped.parameters()) == round(ctrl.current_params)
    stripped.train()  # dropout 0: the training path computes the same
    torch.testing.assert_close(stripped(x), out)


@pytest.mark.parametrize("name", MODELS)
def test_flops_are_what_torch_counts(name):
    """The rule's FLOPs are torch.utils.flop_counter's for the module's computation (the pruned class runs it
    with linear, matmul and scaled_dot_product_attention, which torch counts)."""
    build, inputs = MODELS[name]
    model, x = build().eval().requires_grad_(False), inputs()[:1]
    analysis = hf_prune.analyze_model(model, x, verify=False)
    for m in model.modules():
        if type(m) is nn.MultiheadAttention:
            m.__class__ = PrunedMultiheadAttention
        elif type(m) is nn.TransformerEncoderLayer:  # not its fused kernel, which torch does not count
            m.__class__ = PrunedTransformerEncoderLayer
    # the math kernel: torch's counter has no formula for the CPU flash kernel, it counts the math one's matmuls
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    assert analysis.dense_flops == counter.get_total_flops()


def test_used_attention_weights_keep_the_heads():
    model, x = _Pool().eval(), torch.randn(2, 6, 8)
    analysis = hf_prune.analyze_model(model, (x[:1], True), verify=False)
    heads = [g for g in analysis.groups if g.attention == "attention"]
    assert heads and not heads[0].prunable
    assert any("averaged over its heads (need_weights=True), are used" in r for r in heads[0].reasons)


def test_a_mask_per_head_keeps_the_heads():
    class PerHeadMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.embed(x)
            mask = torch.zeros(len(x) * 4, x.shape[1], x.shape[1])
            return self.fc(self.attention(h, h, h, attn_mask=mask, need_weights=False)[0].mean(1))

    analysis = hf_prune.analyze_model(PerHeadMask().eval(), torch.randn(1, 6, 8), verify=False)
    heads = [g for g in analysis.groups if g.attention == "attention"]
    assert heads and not heads[0].prunable
    assert any("one matrix per head" in r for r in heads[0].reasons)


class _NumberAfterAttention(nn.Module):
    """Scales the attention's output by a number computed from the embedding width: the stripped model keeps the
    dense number there, and the calls inside the attention (another implementation once stripped) do not
    count among its own."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        y = self.attention(h, h, h)[0] * h.shape[-1] ** -0.5
        return self.fc(y.mean(1))


def test_a_module_around_the_attention_keeps_its_numbers():
    torch.manual_seed(0)
    model, x = _NumberAfterAttention().eval(), torch.randn(2, 6, 8)
    ctrl = hf_prune.create_pruning_controller(model, {"params": {"pruning_target": 0.5}}, example_inputs=x[:1])
    assert any("embed" in g.producers for g in ctrl.groups.values())
    ctrl.set_pruning_level({gid: 0.25 if g.attention else 0.5 for gid, g in ctrl.groups.items()})
    with torch.no_grad():
        masked = model(x)
        stripped = ctrl.strip_model(model, do_copy=True)
        torch.testing.assert_close(stripped(x), masked, rtol=1e-5, atol=1e-6)
    assert type(stripped.attention) is PrunedMultiheadAttention
    assert getattr(stripped, PINNED) == {"mul#1": 32 ** -0.5}
