"""Re-estimating BatchNorm running statistics after the masks change (NNCF's BN adaptation)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import HfPruneError


def _batch_inputs(batch: Any) -> tuple[Any, int]:
    """The model inputs of a batch (tensor, (inputs, labels) or a dict) and its size."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
        first = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        return inputs, first.shape[0]
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[0].shape[0]
    return batch, batch.shape[0]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, data_loader: Iterable[Any] | None, num_samples: int) -> int:
    """Reset and re-estimate every BatchNorm's running mean/var on ``num_samples`` samples.

    Statistics are cumulative averages over the batches seen; under ``torch.distributed`` they are
    averaged across ranks so every rank ends with the same model. Returns the samples used.
    """
    if data_loader is None:
        raise HfPruneError("BatchNorm adaptation needs data: pass data_loader= to create_pruning_controller")
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
            inputs, n = _batch_inputs(batch)
            if isinstance(inputs, dict):
                model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
            else:
                model(inputs.to(device))
            seen += n
            if seen >= num_samples:
                break
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for m in norms:
            for stat in (m.running_mean, m.running_var):
                dist.all_reduce(stat)
                stat /= dist.get_world_size()
    return seen
