"""Shared fixtures: small real timm / transformers models with randomized norm statistics."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from hf_prune.graph.norms import norm_kind

warnings.filterwarnings("ignore", category=UserWarning, module="timm")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one intra-op thread each, or they oversubscribe the cores
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it; CI is CPU-only)")


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-randomize norm affine parameters, running statistics and layer scales.

    timm zero-initialises some BatchNorm gammas and layer scales (1e-6): on such random weights whole
    branches vanish and a wrong strip could go unnoticed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)) or norm_kind(module):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.rand(module.bias.shape, generator=g) - 0.5)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) * 0.4 - 0.2)
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "layer_scale_parameter", "lambda1", "lambda2") or name.endswith(("ls1.gamma", "ls2.gamma")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
