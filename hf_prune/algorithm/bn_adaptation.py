"""Re-estimating BatchNorm running statistics after the masks change (NNCF's BN adaptation)."""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch
from torch import nn

from ..distributed import all_reduce_mean
from ..errors import MissingInputError


def _accepts_kwarg(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_on_batch(model: nn.Module, batch: Any, device: torch.device) -> Any:
    """Call ``model`` on a batch: a tensor, ``(inputs, labels)``, or a dict such as
    ``{"pixel_values": ..., "labels": ...}`` (passed by keyword where the model accepts it)."""
    if isinstance(batch, dict):
        inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label") and isinstance(v, torch.Tensor)}
        if all(_accepts_kwarg(model, k) for k in inputs):
            return model(**inputs)
        return model(*inputs.values())
    if isinstance(batch, (tuple, list)):
        return model(batch[0].to(device))
    return model(batch.to(device))


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    return (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, data_loader: Iterable[Any] | None, num_samples: int) -> int:
    """Reset and re-estimate every BatchNorm's running mean/var on ``num_samples`` samples.

    Statistics are cumulative averages over the batches seen; under ``torch.distributed`` they are
    averaged across ranks so every rank ends with the same model. Returns the samples used.
    """
    if data_loader is None:
        raise MissingInputError("BatchNorm adaptation needs data: pass data_loader= to create_pruning_controller")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or num_samples <= 0:
        return 0
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    try:
        for batch in data_loader:
            run_on_batch(model, batch, device)
            seen += _batch_size(batch)
            if seen >= num_samples:
                break
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    for m in norms:
        for stat in (m.running_mean, m.running_var):
            all_reduce_mean(stat)
    return seen
