"""Backend variants of an op, mapped to the one canonical op the trace has a rule for.

Which ATen op a layer dispatches to depends on the device and the backend: BatchNorm is
``_native_batch_norm_legit_no_training`` on CPU, ``cudnn_batch_norm`` on NVIDIA GPUs and
``miopen_batch_norm`` on AMD ones; a convolution may surface as ``mkldnn_convolution`` or
``cudnn_convolution``; RMSNorm as ``_fused_rms_norm``. The trace sees each op as it runs, so every variant is
rewritten here into the canonical op with canonical arguments before a channel rule or a FLOPs formula
looks at it. That keeps the analysis the same whatever kernel a backend picks (the analysis also traces a
CPU float32 copy of the model, see :mod:`.analysis`; this table covers models traced elsewhere and ops a model
calls directly).

Extend it with :func:`register_op_variant` when a backend op is reported as having "no channel rule".
"""

from __future__ import annotations

from typing import Any, Callable

import torch

aten = torch.ops.aten

Convert = Callable[[tuple, dict], tuple[tuple, dict]]
"""Maps a variant's ``(args, kwargs)`` to the canonical op's ``(args, kwargs)``."""


def _same(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(args), dict(kwargs)


def _bn_training(training: bool) -> Convert:
    """``(input, weight, bias, running_mean, running_var, momentum, eps)`` → ``native_batch_norm``."""

    def convert(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x, w, b, rm, rv, momentum, eps = args[:7]
        return (x, w, b, rm, rv, training, momentum, eps), {}

    return convert


def _conv_without_bias(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``cudnn_convolution(x, w, padding, stride, dilation, groups, ...)`` → ``convolution``."""
    x, w, padding, stride, dilation, groups = args[:6]
    return (x, w, None, stride, padding, dilation, False, [0] * len(stride), groups), {}


def _conv_with_bias(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``mkldnn/miopen_convolution(x, w, bias, padding, stride, dilation, groups, ...)`` → ``convolution``."""
    x, w, b, padding, stride, dilation, groups = args[:7]
    return (x, w, b, stride, padding, dilation, False, [0] * len(stride), groups), {}


def _conv_transpose_without_bias(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``cudnn_convolution_transpose(x, w, padding, output_padding, stride, dilation, groups, ...)``."""
    x, w, padding, output_padding, stride, dilation, groups = args[:7]
    return (x, w, None, stride, padding, dilation, True, output_padding, groups), {}


def _conv_transpose_with_bias(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``miopen_convolution_transpose(x, w, bias, padding, output_padding, stride, dilation, groups, ...)``."""
    x, w, b, padding, output_padding, stride, dilation, groups = args[:8]
    return (x, w, b, stride, padding, dilation, True, output_padding, groups), {}


def _conv_slow(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``_slow_conv2d_forward / thnn_conv2d(x, w, kernel_size, bias, stride, padding)`` → ``convolution``."""
    names = ("self", "weight", "kernel_size", "bias", "stride", "padding", "dilation")
    given = dict(zip(names, args), **kwargs)
    stride = list(given.get("stride", [1, 1]))
    return (given["self"], given["weight"], given.get("bias"), stride, list(given.get("padding", [0, 0])),
            list(given.get("dilation", [1, 1])), False, [0] * len(stride), 1), {}


def _conv_full(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``_convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups, ...)``."""
    return tuple(args[:9]), {}


def _rms_norm(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``_fused_rms_norm(x, normalized_shape, weight, eps)`` → ``native_layer_norm`` (no bias)."""
    x, shape, w = args[:3]
    eps = args[3] if len(args) > 3 and args[3] is not None else 1e-6
    return (x, shape, w, None, eps), {}


def _addmm_activation(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``_addmm_activation(bias, a, b, use_gelu=...)`` → ``addmm`` (the activation is per element)."""
    return tuple(args[:3]), {}


# variant op → (canonical op, argument conversion)
OP_VARIANTS: dict[Any, tuple[torch._ops.OpOverload, Convert]] = {}


def register_op_variant(op: Any, canonical: torch._ops.OpOverload, convert: Convert = _same) -> None:
    """Treat ``op`` (an op packet such as ``torch.ops.mylib.my_bn``) as the ATen overload ``canonical``
    (e.g. ``torch.ops.aten.mul.Tensor``) for the analysis; ``convert`` maps its ``(args, kwargs)`` to the
    canonical overload's layout (default: unchanged). The conversion may reorder, drop or add plain values,
    but must pass the op's tensors through unchanged."""
    if not isinstance(canonical, torch._ops.OpOverload):
        raise TypeError(f"canonical must be an op overload such as torch.ops.aten.mul.Tensor, got {canonical!r}")
    OP_VARIANTS[op] = (canonical, convert)


for _op, _canonical, _convert in (
    (aten.cudnn_batch_norm, aten.native_batch_norm.default, _same),
    (aten.miopen_batch_norm, aten.native_batch_norm.default, _same),
    (aten._batch_norm_with_update, aten.native_batch_norm.default, _bn_training(True)),
    (aten._batch_norm_no_update, aten.native_batch_norm.default, _bn_training(False)),
    (aten._convolution, aten.convolution.default, _conv_full),
    (aten.convolution_overrideable, aten.convolution.default, _conv_full),
    (aten.cudnn_convolution, aten.convolution.default, _conv_without_bias),
    (aten.mkldnn_convolution, aten.convolution.default, _conv_with_bias),
    (aten.miopen_convolution, aten.convolution.default, _conv_with_bias),
    (aten.miopen_depthwise_convolution, aten.convolution.default, _conv_with_bias),
    (aten.cudnn_convolution_transpose, aten.convolution.default, _conv_transpose_without_bias),
    (aten.miopen_convolution_transpose, aten.convolution.default, _conv_transpose_with_bias),
    (aten._slow_conv2d_forward, aten.convolution.default, _conv_slow),
    (aten.thnn_conv2d, aten.convolution.default, _conv_slow),
    (aten._fused_rms_norm, aten.native_layer_norm.default, _rms_norm),
    (aten._addmm_activation, aten.addmm.default, _addmm_activation),
    (aten._safe_softmax, aten._softmax.default, _same),
):
    register_op_variant(_op, _canonical, _convert)


def canonicalize(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> tuple[torch._ops.OpOverload, tuple, dict]:
    """``(canonical overload, args, kwargs)`` of an op as the trace's rules and FLOPs formulas expect it."""
    found = OP_VARIANTS.get(func.overloadpacket)
    if found is None:
        return func, args, kwargs
    canonical, convert = found
    args, kwargs = convert(args, kwargs)
    return canonical, args, kwargs
