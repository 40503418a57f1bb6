"""Weight-standardized convolutions (timm ``StdConv2d`` / ``ScaledStdConv2d``: BiT, NFNets) under masks.

Such a layer standardizes each output filter of its weight in forward: ``(w - mean) / sqrt(var + eps)``
over the filter's inputs × kernel (a training-mode ``batch_norm`` of the weight viewed as
``(1, out, in·k·k)``). Removing whole filters is exact, since every filter is standardized on its own.
Removing input channels changes the statistics of every filter: the stripped layer standardizes over the
kept inputs only. Zeroing the pruned input columns (as masks do for ordinary layers) would instead leave
them in the statistics and give them a nonzero standardized value.

So the masked layer is given :func:`standardized_preimage` of its weight instead: a tensor whose
standardization is exactly ``keep ×`` the standardization over the kept entries. The masked model then
computes what the stripped model will (and receives the stripped model's gradients), with no change to
the layer's code. With ``d`` the kept entries minus their mean, ``var`` their variance and ``r`` the
removed fraction of a filter, the preimage is ``a·d`` (zero where removed), ``a = 1 / sqrt(1 + r·var/eps)``:
its mean is 0 and its variance ``a²·(1 - r)·var``, so that ``a·d / sqrt(a²(1 - r)var + eps)`` equals
``d / sqrt(var + eps)``. ``a`` is about ``sqrt(eps / (r·var))``: tiny for BiT's eps of 1e-8, which float32 and
bfloat16 weights hold at full relative precision, float16 weights (without float32 master weights) not.
"""

from __future__ import annotations

import torch


def standardized_preimage(weight: torch.Tensor, keep: torch.Tensor, eps: float) -> torch.Tensor:
    """A tensor shaped like ``weight`` whose per-filter standardization (over every dimension but 0,
    biased variance, ``eps``) is ``keep`` times the standardization of ``weight`` over its kept entries.

    ``keep`` is a 0/1 mask broadcastable to ``weight``. Computed in float32 at least; a filter with nothing
    kept gives zeros.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.flatten(1).to(dtype)
    k = keep.to(device=weight.device, dtype=dtype).expand(weight.shape).flatten(1)
    n = k.sum(1, keepdim=True)
    mean = (w * k).sum(1, keepdim=True) / n.clamp_min(1)
    dev = (w - mean) * k
    var = dev.square().sum(1, keepdim=True) / n.clamp_min(1)
    removed = 1 - n / w.shape[1]
    return (dev * torch.rsqrt(1 + removed * var / eps)).reshape(weight.shape).to(weight.dtype)
