"""Reshape sizes and numbers that a stripped module's code would still compute from its dense widths.

Many attention implementations merge their heads with ``x.transpose(1, 2).reshape(B, N, C)``, ``C`` taken
from the *input's* width, or split them with ``reshape(B, N, 3, self.num_heads, C // self.num_heads)``. After
heads are removed these sizes are wrong, whatever integer attributes the strip updates, and the stripped
module cannot run. The trace knows what each such reshape must produce: the kept channels of every dimension.

So the trace records every ``view``/``reshape`` call and every split (:class:`ViewCall`: which module ran it,
its key among the calls made while that module ran, its output's channel spaces, or its pieces'), and the strip
gives a module whose reshapes or splits need it a forward pre-hook that runs its forward under :class:`_Resize`,
a ``TorchFunctionMode`` that sets the channel dimensions of those calls to their stripped sizes. The other
dimensions (batch, tokens) are the model's own, so the module still runs at any batch size and resolution,
and under ``torch.compile``.

A module gets the hook only where its own code computes a wrong size: the strip check
(:mod:`.verify`) runs the stripped model with every view call resized and keeps the calls whose sizes
were actually changed (:attr:`~.trace.ModelTrace.resized_views`); the others run without any mode. The
sizes are part of the shape spec, so a reload installs the same hooks.

Numbers alike: a module may compute a Python number from a width (torchvision's Swin scales its queries by
``(C // num_heads) ** -0.5``, ``C`` the input's width), which a masked model computes at the dense width. The
trace records every call of a tensor and a number (:class:`ScalarCall`, keyed like views); the strip check
pins every one to its dense value and keeps those the code computed otherwise, and only these are pinned in
the stripped model (``shape_spec.scalars``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .spaces import Label, SpaceTable

VIEW_FUNCTIONS = frozenset({torch.Tensor.view, torch.Tensor.reshape, torch.reshape})
"""The Python-level calls whose sizes are recorded and, in a stripped module, resized."""
SPLIT_FUNCTIONS = frozenset({torch.split, torch.Tensor.split, torch.Tensor.split_with_sizes})
"""The Python-level splits whose pieces' sizes are recorded and, in a stripped module, resized (FocalNet splits
``(C, C, levels)`` with ``C`` its input's width; timm's selective kernel ``in_channels // paths``)."""

SCALAR_FUNCTIONS = {
    **dict.fromkeys((torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__imul__, torch.Tensor.mul,
                     torch.Tensor.mul_, torch.mul), "mul"),
    **dict.fromkeys((torch.Tensor.__truediv__, torch.Tensor.__itruediv__, torch.Tensor.div, torch.Tensor.div_,
                     torch.div), "div"),
}
"""The Python-level calls of a tensor and a Python number whose number is recorded and, in a stripped module,
pinned to the dense model's where its code computes another (torchvision's Swin scales its queries by
``(C // num_heads) ** -0.5``, ``C`` the input's width), by the op's name."""

ATTR = "_hf_prune_reshapes"
"""Module attribute holding its resized calls: call key (:func:`_call_key`) → {dimension: stripped size}."""
SCALARS = "_hf_prune_scalars"
"""Module attribute holding its pinned numbers: call key (:func:`_scalar_key`) → the dense model's number."""
WRONG = "_hf_prune_wrong"
"""Module attribute, set while the strip check runs: call key → the dimensions its code sized otherwise."""

Resizes = dict[str, dict[int, int]]


def _call_key(args: tuple, kwargs: dict, counts: dict[str, int]) -> str | None:
    """The key of a view call among the calls of one module's forward: its signature (input dimensions >
    requested dimensions) and how many calls with that signature came before, counted in ``counts``
    (None for a call without sizes, ``view(dtype)``).
    Signatures, not positions: a path taken only once (ConViT computes its relative indices on its first
    call only) then does not renumber the calls that resize; no frame inspection, so ``torch.compile``
    traces it."""
    found = _sizes(args, kwargs)
    if found is None:
        return None
    signature = f"{found[0].dim()}>{len(found[1])}"
    counts[signature] = counts.get(signature, 0) + 1
    return f"{signature}#{counts[signature]}"


def _split_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any, int]:
    """(tensor, split size or sizes, dimension) of a split call."""
    x = args[0]
    names = ("split_size_or_sections", "split_size", "split_sizes")  # torch.split's, Tensor.split's, ..._with_sizes'
    sizes = args[1] if len(args) > 1 else next(kwargs[n] for n in names if n in kwargs)
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    return x, sizes, dim % x.dim()


def _split_key(x: torch.Tensor, counts: dict[str, int]) -> str:
    """The key of a split among one module's calls (counted in ``counts``): the input's dimensions and the
    occurrence (not the number of pieces, which a wrong size changes)."""
    signature = f"split{x.dim()}"
    counts[signature] = counts.get(signature, 0) + 1
    return f"{signature}#{counts[signature]}"


def _pieces(sizes: Any, n: int) -> list[int]:
    """The sizes of the pieces a split by ``sizes`` (an int or a list) makes of a dimension of ``n``."""
    if isinstance(sizes, int):
        return [min(sizes, n - start) for start in range(0, n, sizes)] if sizes > 0 else [n]
    return [int(s) for s in sizes]


def _scalar(args: tuple) -> int | None:
    """The position of the Python number in a call of a tensor and a number, or None."""
    if len(args) != 2:
        return None
    for i in (0, 1):
        if type(args[i]) in (int, float) and isinstance(args[1 - i], torch.Tensor):
            return i
    return None


def _scalar_key(func: Any, counts: dict[str, int]) -> str:
    """The key of a number's call among one module's (counted in ``counts``): its op and occurrence."""
    op = SCALAR_FUNCTIONS[func]
    counts[op] = counts.get(op, 0) + 1
    return f"{op}#{counts[op]}"


@dataclass(frozen=True)
class ScalarCall:
    """One traced call of a tensor and a Python number: the innermost module running it, its key, the number."""

    module: str
    key: str
    value: float


@dataclass(frozen=True)
class ViewCall:
    """One traced ``view``/``reshape``: the innermost module running it, its key (:func:`_call_key`, counted
    over the calls made while that module ran, its children's included), and its output's shape and channel
    spaces; or one split (:func:`_split_key`), its pieces' sizes and channel spaces along the split dimension
    (resized by piece index as a view by dimension)."""

    module: str
    key: str
    shape: tuple[int, ...]
    labels: tuple[Label, ...]


FAST_PATHS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)
"""Modules whose calls are neither recorded nor counted: they take a fused fast path only where no
``TorchFunctionMode`` is active (the recorder pauses while they run, so that the trace sees the path they take
at inference), and a stripped ``nn.MultiheadAttention`` runs other code (:mod:`.multihead`), so the hook of a
module around one pauses while it runs too (its calls' keys stay the trace's)."""


class ViewRecorder(TorchFunctionMode):
    """Records :class:`ViewCall` s while the tracer runs; ``labels_of`` gives a traced tensor's labels. The
    tracer's module hooks call :meth:`enter` and :meth:`exit`."""

    def __init__(self, labels_of: Callable[[torch.Tensor], list[Label]]) -> None:
        super().__init__()
        self.labels_of = labels_of
        self.frames: list[tuple[str, dict[str, int], bool]] = []  # (module, its calls per signature, paused)
        self.calls: list[ViewCall] = []
        self.scalars: list[ScalarCall] = []

    def enter(self, name: str, module: nn.Module) -> None:
        paused = isinstance(module, FAST_PATHS) and not any(frame[2] for frame in self.frames)  # not yet paused
        if paused:
            self.__exit__(None, None, None)
        self.frames.append((name, {}, paused))

    def exit(self) -> None:
        if self.frames and self.frames.pop()[2]:
            self.__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in VIEW_FUNCTIONS and self.frames:
            keys = [_call_key(args, kwargs, counts) for _, counts, _ in self.frames]
            if keys[-1] is not None and isinstance(out, torch.Tensor):
                self.calls.append(ViewCall(self.frames[-1][0], keys[-1], tuple(out.shape), tuple(self.labels_of(out))))
        elif func in SPLIT_FUNCTIONS and self.frames and isinstance(out, (tuple, list)):
            x, _, dim = _split_args(args, kwargs)
            keys = [_split_key(x, counts) for _, counts, _ in self.frames]
            self.calls.append(ViewCall(self.frames[-1][0], keys[-1], tuple(o.shape[dim] for o in out),
                                       tuple(self.labels_of(o)[dim] for o in out)))
        elif func in SCALAR_FUNCTIONS and self.frames and not kwargs and (i := _scalar(args)) is not None:
            keys = [_scalar_key(func, counts) for _, counts, _ in self.frames]
            self.scalars.append(ScalarCall(self.frames[-1][0], keys[-1], args[i]))
        return out


ChannelDims = dict[str, dict[str, set[int]]]
"""Per module: the view calls to resize, each with its dimensions that carry prunable channels."""


def stripped_views(table: SpaceTable, calls: list[ViewCall], leaf_masks: dict[int, torch.Tensor],
                   dims: ChannelDims | None = None) -> dict[str, Resizes]:
    """Per module: the stripped sizes of ``dims`` (its kept channels, changed or not: the module's code may
    compute an unchanged size from a changed width), or where None of every dimension of every call (valid
    on the traced inputs only: the strip check's)."""
    out: dict[str, Resizes] = {}
    for call in calls:
        wanted = range(len(call.shape)) if dims is None else dims.get(call.module, {}).get(call.key, ())
        sizes = {d: int(table.label_mask(call.labels[d], leaf_masks).sum()) for d in wanted}
        if sizes:
            out.setdefault(call.module, {})[call.key] = sizes
    return out


def pinned_scalars(calls: list[ScalarCall], keys: ChannelDims | None = None) -> dict[str, dict[str, float]]:
    """Per module: the dense numbers of the calls named in ``keys`` (where None: of every call, for the strip
    check)."""
    out: dict[str, dict[str, float]] = {}
    for call in calls:
        if keys is None or call.key in keys.get(call.module, {}):
            out.setdefault(call.module, {})[call.key] = call.value
    return out


def resized_dims(stripped: nn.Module) -> ChannelDims:
    """The dimensions of view calls whose module's code asked for another size than the stripped one, and the
    number calls (no dimensions) whose code computed another number than the dense model's, in ``stripped``
    (every view resized and every number pinned, run on the traced inputs)."""
    return {path: getattr(m, WRONG) for path, m in stripped.named_modules() if getattr(m, WRONG, None)}


def install(model: nn.Module, resizes: Mapping[str, Mapping[str, Mapping[Any, int]]],
            scalars: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Hook each module named in ``resizes`` (dimensions may be JSON strings) or ``scalars`` so its forward runs
    its reshapes at the stripped sizes and its numbers at the dense values; merges with an earlier strip's."""
    for path, calls in resizes.items():
        current = _hooked(model.get_submodule(path), ATTR)
        for key, dims in calls.items():
            current.setdefault(key, {}).update({int(d): int(n) for d, n in dims.items()})
    for path, numbers in (scalars or {}).items():
        _hooked(model.get_submodule(path), SCALARS).update(numbers)


def _hooked(module: nn.Module, attr: str) -> dict:
    """``module``'s dict ``attr`` (:data:`ATTR` or :data:`SCALARS`), the module given (once) the hooks that run its
    forward under :class:`_Resize`, paused inside its :data:`FAST_PATHS` modules."""
    if getattr(module, ATTR, None) is None and getattr(module, SCALARS, None) is None:
        module.register_forward_pre_hook(_enter)
        module.register_forward_hook(_exit, always_call=True)
        for inner in module.modules():
            if isinstance(inner, FAST_PATHS) and not inner.__dict__.get(_PAUSES):
                inner.register_forward_pre_hook(_pause)
                inner.register_forward_hook(_resume, always_call=True)
                inner.__dict__[_PAUSES] = True
    if getattr(module, attr, None) is None:
        setattr(module, attr, {})
    return getattr(module, attr)


def installed(model: nn.Module) -> dict[str, dict[str, dict[str, int]]]:
    """The resized calls of every module of ``model``, JSON-ready (for the shape spec)."""
    return {path: {key: {str(d): n for d, n in dims.items()} for key, dims in sorted(getattr(m, ATTR).items())}
            for path, m in model.named_modules() if getattr(m, ATTR, None)}


def installed_scalars(model: nn.Module) -> dict[str, dict[str, float]]:
    """The pinned numbers of every module of ``model``, JSON-ready (for the shape spec)."""
    return {path: dict(sorted(getattr(m, SCALARS).items())) for path, m in model.named_modules()
            if getattr(m, SCALARS, None)}


_ACTIVE = threading.local()
"""``modes``: the :class:`_Resize` modes of the module forwards running in this thread."""
_PAUSES = "_hf_prune_pauses"
"""Set on a :data:`FAST_PATHS` module once it pauses the modes around it."""


def _active() -> list[_Resize]:
    if not hasattr(_ACTIVE, "modes"):
        _ACTIVE.modes = []
    return _ACTIVE.modes


def _enter(module: nn.Module, args: Any) -> None:
    mode = _Resize(module)
    module.__dict__.setdefault("_hf_prune_modes", []).append(mode)
    _active().append(mode)
    mode.__enter__()


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    modes = module.__dict__.get("_hf_prune_modes")
    if modes:
        mode = modes.pop()
        mode.__exit__(None, None, None)
        _active().remove(mode)


def _pause(module: nn.Module, args: Any) -> None:
    for mode in _active():
        mode.paused += 1


def _resume(module: nn.Module, args: Any, output: Any) -> None:
    for mode in _active():
        mode.paused -= 1


def _sizes(args: tuple, kwargs: dict) -> tuple[torch.Tensor, list] | None:
    """The tensor and the requested sizes of a view call, or None for another form (``view(dtype)``)."""
    if kwargs:
        args = args + tuple(kwargs.get(k) for k in ("shape", "size") if k in kwargs)
    if len(args) < 2:
        return None
    x, rest = args[0], args[1:]
    sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else list(rest)
    return (x, sizes) if all(isinstance(n, (int, torch.SymInt)) for n in sizes) else None


class _Resize(TorchFunctionMode):
    """Runs one forward of ``module`` with its recorded view calls at their stripped sizes."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.resizes: Resizes = getattr(module, ATTR, None) or {}
        self.scalars: dict[str, float] = getattr(module, SCALARS, None) or {}
        self.counts: dict[str, int] = {}
        self.paused = 0  # > 0 while a FAST_PATHS module inside runs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        if func in SCALAR_FUNCTIONS and not kwargs and (i := _scalar(args)) is not None:
            key = _scalar_key(func, self.counts)
            dense = self.scalars.get(key)
            if dense is not None and not math.isclose(args[i], dense, rel_tol=1e-9):  # the code's own number
                self._wrong(key, set())
                args = (dense, args[1]) if i == 0 else (args[0], dense)
            return func(*args)
        if func in SPLIT_FUNCTIONS:
            x, sizes, dim = _split_args(args, kwargs)
            key = _split_key(x, self.counts)
            pieces = self.resizes.get(key)
            if pieces:
                asked = _pieces(sizes, x.shape[dim])
                if max(pieces) < len(asked):
                    new = [pieces.get(i, n) for i, n in enumerate(asked)]
                else:  # the code's size cut fewer pieces than the trace's (every piece is resized then)
                    new = [pieces[i] for i in sorted(pieces)]
                wrong = {i for i in pieces if i >= len(asked) or asked[i] != new[i]}
                if wrong:
                    self._wrong(key, wrong)
                return func(x, new, dim)
            return func(*args, **kwargs)
        if func in VIEW_FUNCTIONS:
            key = _call_key(args, kwargs, self.counts)
            dims = self.resizes.get(key) if key is not None else None
            if dims:
                x, sizes = _sizes(args, kwargs)
                new = [dims.get(d, n) for d, n in enumerate(sizes)]
                wrong = {d for d, n in enumerate(sizes) if n != -1 and n != new[d]}  # the code's own size
                if wrong:
                    self._wrong(key, wrong)
                return func(x, new)
        return func(*args, **kwargs)

    def _wrong(self, key: str, dims: set[int]) -> None:
        """Record that the module's code asked for other sizes of ``dims`` in call ``key`` (a number call: no
        dimensions) than the stripped model's (:func:`resized_dims` reads it)."""
        self.module.__dict__.setdefault(WRONG, {}).setdefault(key, set()).update(dims)
