"""Latency on the device that will run the model: ``channel_multiple: auto`` and a latency model.

The latency model is a lookup table, as in NetAdapt and NVIDIA's HALP: every conv/linear layer that a
pruning group narrows is timed alone, on the deployment device, dtype and batch size, at a few input and
output widths, down to the narrowest any plan gives it. A plan's latency is the dense model's measured
latency minus what its layers save, read from the table (bilinear between measured widths), minus what
the per-channel ops between layers (norms, activations, adds) save on the narrower outputs; that
per-channel time is calibrated once on a copy stripped to half of every group, so the model reproduces
that measurement. The rest (attention products, pooling, the head) counts as constant. Tables are
cached in a JSON file under a key (model structure, device, dtype, batch size, torch version, CPU
threads) and measured again when it changes.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import HfPruneError
from ..files import write_text_atomic
from ..graph.analysis import ModelAnalysis
from ..graph.groups import PruningGroup
from ..graph.spaces import Label, SpaceTable
from ..graph.surgery import strip
from ..graph.trace import call_model
from .planning import kept_count

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WIDTH_FRACTIONS = (1.0, 0.75, 0.5, 0.25)
"""Kept fractions of its groups at which each layer is timed (and the fewest they can keep)."""
WARMUP, ITERATIONS, BUDGET_S = 3, 20, 0.25
TABLE_FORMAT = 3  # 3: widths down to the most pruned plan
DEFAULT_CACHE_DIR = Path(os.environ.get("HF_PRUNE_CACHE", Path.home() / ".cache" / "hf_prune")) / "latency"


class LatencyError(HfPruneError):
    """The deployment target cannot be used to measure latency."""


@dataclass(frozen=True)
class DeployTarget:
    """Where and how the pruned model will run: ``params.deploy_device`` / ``deploy_dtype`` /
    ``latency_batch_size``; device and dtype default to those of the model's parameters."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int = 1

    @classmethod
    def from_config(cls, params: Any, model: nn.Module) -> "DeployTarget":
        first = next(model.parameters(), None)
        try:
            device = torch.device(params.deploy_device) if params.deploy_device else (
                first.device if first is not None else torch.device("cpu"))
        except RuntimeError:
            raise LatencyError(f"params.deploy_device: {params.deploy_device!r} is not a device; expected e.g. "
                               "'cpu', 'cuda' or 'cuda:1'") from None
        if device.type == "meta":
            raise LatencyError("params.deploy_device: the model is on 'meta'; name the device it will run on")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LatencyError(f"params.deploy_device: {device} is not available on this machine "
                               "(latency must be measured on the device the model will run on)")
        dtype = DTYPES[params.deploy_dtype] if params.deploy_dtype else (
            first.dtype if first is not None and first.is_floating_point() else torch.float32)
        return cls(device, dtype, params.latency_batch_size)

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"{platform.processor() or platform.machine()} {torch.backends.cpu.get_cpu_capability()}"

    @property
    def channels_last(self) -> bool:
        """Convolutions run channels_last on CUDA (the tensor-core layout), contiguous on CPU."""
        return self.device.type == "cuda"


def auto_channel_multiple(target: DeployTarget) -> int:
    """The channel multiple ``channel_multiple: auto`` picks for a deployment target.

    CUDA, bf16/fp16: 64 (tensor-core tiles; on an H200, ResNet-50 at 50% FLOPs ran 1.23x faster with
    multiple 64 vs 1.10x with 8). CUDA fp32 (TF32 tensor cores): 32. CPU: ONNX Runtime's blocked NCHWc
    convolutions, whose block is 16 channels with AVX-512 and 8 otherwise.
    """
    if target.device.type == "cuda":
        return 64 if target.dtype in (torch.bfloat16, torch.float16) else 32
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


# ---------------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int = WARMUP, iterations: int = ITERATIONS,
            budget_s: float = BUDGET_S) -> float:
    """Milliseconds of one call of ``fn`` on ``device`` (see :func:`fastest_ms`)."""
    return fastest_ms([fn], device, warmup, iterations, budget_s)[0]


def fastest_ms(fns: Sequence[Callable[[], Any]], device: torch.device, warmup: int = WARMUP,
               iterations: int = ITERATIONS, budget_s: float = BUDGET_S) -> list[float]:
    """Milliseconds of one call of each of ``fns``, called in turn: the fastest of ``iterations`` rounds
    (fewer, at least 3, once ``budget_s`` is spent), timed with CUDA events on GPUs. The fastest run is
    the least disturbed by other processes, and taking turns exposes every function to the same load."""
    samples: list[list[float]] = [[] for _ in fns]
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        _synchronize(device)
        deadline = time.perf_counter() + budget_s
        rounds = 0
        while rounds < iterations and (rounds < 3 or time.perf_counter() < deadline):
            for fn, out in zip(fns, samples):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    out.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    fn()
                    out.append((time.perf_counter() - t0) * 1e3)
            rounds += 1
    return [min(out) for out in samples]


def batched(inputs: Any, target: DeployTarget) -> Any:
    """``inputs`` with the batch dimension repeated to the target's batch size, on its device (floating
    tensors in its dtype, channels_last for images where the target prefers it)."""
    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        t = t[:1].expand(target.batch_size, *t.shape[1:]).to(target.device)
        t = t.to(target.dtype) if t.is_floating_point() else t
        channels_last = t.dim() == 4 and target.channels_last
        return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return tree_map(move, inputs)


def deploy_copy(model: nn.Module, target: DeployTarget) -> nn.Module:
    """A copy of ``model`` on the target's device and dtype, in eval mode and its memory format."""
    deployed = copy.deepcopy(model).eval().to(device=target.device, dtype=target.dtype)
    return deployed.to(memory_format=torch.channels_last) if target.channels_last else deployed


def measure_latency(model: nn.Module, example_inputs: Any, target: DeployTarget) -> float:
    """Milliseconds of one forward pass (the fastest of several) of a copy of ``model`` on the deployment
    target, at its batch size."""
    deployed = deploy_copy(model, target)
    inputs = batched(example_inputs, target)
    return time_ms(lambda: call_model(deployed, inputs), target.device)


# ---------------------------------------------------------------------------- the table
@dataclass
class LayerTable:
    """One layer's measured milliseconds at output widths × input widths, and its output size
    (elements of its dense output, over which the per-channel ops that follow it run)."""

    out_widths: list[int]
    in_widths: list[int]
    ms: list[list[float]]
    activations: int = 0

    def lookup(self, out_width: float, in_width: float) -> float:
        """Bilinear interpolation (clamped) between the measured widths."""
        def axis(widths: list[int], w: float) -> tuple[int, int, float]:
            if len(widths) == 1:
                return 0, 0, 0.0
            w = min(max(w, widths[0]), widths[-1])
            j = min(max(bisect.bisect_left(widths, w), 1), len(widths) - 1)
            a, b = widths[j - 1], widths[j]
            return j - 1, j, (w - a) / (b - a)
        o0, o1, to = axis(self.out_widths, out_width)
        i0, i1, ti = axis(self.in_widths, in_width)
        m = self.ms
        low = m[o0][i0] * (1 - ti) + m[o0][i1] * ti
        high = m[o1][i0] * (1 - ti) + m[o1][i1] * ti
        return low * (1 - to) + high * to


@dataclass
class LatencyTable:
    """What is measured once per key: the dense model's milliseconds, every narrowed layer's table,
    and the per-channel time: milliseconds of the ops between layers (norms, activations, adds) per
    unit of layer output, calibrated on one stripped model."""

    dense_ms: float
    layers: dict[str, LayerTable]
    activations: int  # dense output elements of all conv/linear layers
    per_channel_ms: float = 0.0
    savings_scale: float = 1.0  # where the per-channel time alone cannot match the calibration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        return cls(d["dense_ms"], {m: LayerTable(**t) for m, t in d["layers"].items()}, d["activations"],
                   d["per_channel_ms"], d["savings_scale"])


@dataclass
class _Layer:
    module: str
    out_label: Label
    in_label: Label
    out_size: int
    in_size: int
    table: LayerTable


class LatencyModel:
    """Predicted latency (ms) of the model under kept fractions of its leaf spaces (a ``CostModel``).

    Each narrowed layer costs its table's milliseconds at its kept widths plus its share of the
    per-channel time (proportional to its kept output), times the savings scale; the rest of the
    dense time is constant.
    """

    name = "latency"

    def __init__(self, analysis: ModelAnalysis, table: LatencyTable, target: DeployTarget, key: dict[str, Any]) -> None:
        T, trace = analysis.trace.table, analysis.trace
        self.target, self.key, self.table, self.dense = target, key, table, table.dense_ms
        self.layers: list[_Layer] = []
        self._table = T
        self._layers_by_leaf: dict[int, list[int]] = {}
        for module, layer_table in table.layers.items():
            labels = trace.param_labels[f"{module}.weight"]
            shape = trace.param_shapes[f"{module}.weight"]
            layer = _Layer(module, labels[0], labels[1], shape[0], shape[1], layer_table)
            for leaf in {*T.leaves(layer.out_label), *T.leaves(layer.in_label)}:
                self._layers_by_leaf.setdefault(leaf, []).append(len(self.layers))
            self.layers.append(layer)
        self.remainder = self.dense - sum(self._layer_ms(i, {}) for i in range(len(self.layers)))

    def _fractions(self, i: int, kept: Mapping[int, float]) -> tuple[float, float]:
        layer, T = self.layers[i], self._table
        return T.fraction(layer.out_label, dict(kept)), T.fraction(layer.in_label, dict(kept))

    def _layer_ms(self, i: int, kept: Mapping[int, float]) -> float:
        layer = self.layers[i]
        fo, fi = self._fractions(i, kept)
        per_channel = self.table.per_channel_ms * layer.table.activations * fo / max(self.table.activations, 1)
        return self.table.savings_scale * (layer.table.lookup(layer.out_size * fo, layer.in_size * fi) + per_channel)

    def cost(self, kept: Mapping[int, float]) -> float:
        return self.remainder + sum(self._layer_ms(i, kept) for i in range(len(self.layers)))

    def tracker(self, kept: Mapping[int, float]) -> "LatencyTracker":
        return LatencyTracker(self, kept)

    @classmethod
    def build(cls, model: nn.Module, analysis: ModelAnalysis, groups: list[PruningGroup], target: DeployTarget,
              cache_path: str | os.PathLike[str] | None = None) -> "LatencyModel":
        """The latency model of ``model``: read from ``cache_path`` when its key matches, else measured
        on ``target`` (seconds to minutes) and written there."""
        key = cache_key(analysis, target)
        path = Path(cache_path) if cache_path else DEFAULT_CACHE_DIR / f"{_digest(key)}.json"
        cached = _read(path)
        if cached is not None and cached.get("key") == key:
            return cls(analysis, LatencyTable.from_dict(cached["table"]), target, key)
        logger.info("measuring the latency table of %s on %s (%s, batch %d)", analysis.model_class,
                    target.device_name, target.dtype, target.batch_size)
        table = _measure(model, analysis, groups, target)
        _write(path, {"key": key, "table": table.to_dict()})
        return cls(analysis, table, target, key)


class LatencyTracker:
    """Predicted latency under changing kept fractions, re-evaluating only the layers a change touches."""

    def __init__(self, model: LatencyModel, kept: Mapping[int, float]) -> None:
        self.model = model
        self.kept = dict(kept)
        self.per_layer = [model._layer_ms(i, self.kept) for i in range(len(model.layers))]
        self.total = model.remainder + sum(self.per_layer)

    def total_if(self, leaf: int, fraction: float) -> float:
        trial = {**self.kept, leaf: fraction}
        layers = self.model._layers_by_leaf.get(leaf, [])
        return self.total + sum(self.model._layer_ms(i, trial) - self.per_layer[i] for i in layers)

    def set(self, leaf: int, fraction: float) -> None:
        self.kept[leaf] = fraction
        for i in self.model._layers_by_leaf.get(leaf, []):
            new = self.model._layer_ms(i, self.kept)
            self.total += new - self.per_layer[i]
            self.per_layer[i] = new


def cache_key(analysis: ModelAnalysis, target: DeployTarget) -> dict[str, Any]:
    """What a latency table depends on; a cached table with another key is measured again."""
    trace = analysis.trace
    structure = json.dumps([analysis.model_class, sorted(trace.param_shapes.items()),
                            sorted(trace.module_classes.items())], default=str)
    return {
        "format": TABLE_FORMAT,
        "model": analysis.model_class,
        "signature": hashlib.sha256(structure.encode()).hexdigest()[:16],
        "device": target.device_name,
        "dtype": str(target.dtype).removeprefix("torch."),
        "batch_size": target.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if target.device.type == "cpu" else None,
    }


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable latency table %s (%s); measuring again", path, exc)
        return None


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data))


# ---------------------------------------------------------------------------- measuring
def _widths(T: SpaceTable, label: Label, size: int, groups: Mapping[int, PruningGroup]) -> list[int]:
    """Widths at which a layer's axis (``label``, ``size`` channels) is timed: those the planner gives it
    when the groups on it keep :data:`WIDTH_FRACTIONS` of their channels (rounded to their units, so
    attention heads are whole), and when they keep the fewest they can (:func:`minimal_plan`'s widths,
    so that no plan is predicted beyond the table, where it would be clamped to the last width)."""
    on_axis = [groups[leaf] for leaf in T.leaves(label) if leaf in groups]
    if not on_axis:
        return [size]
    levels = [1.0 - f for f in WIDTH_FRACTIONS] + [1.0 - 1e-9]
    kept = [{g.space: kept_count(g, level) / g.size for g in on_axis} for level in levels]
    return sorted({max(1, round(size * T.fraction(label, fractions))) for fractions in kept})


def _measure(model: nn.Module, analysis: ModelAnalysis, groups: list[PruningGroup], target: DeployTarget) -> LatencyTable:
    """Time the dense model, every conv/linear layer a group narrows (alone, at a few widths), and a
    copy stripped to half of every group (which calibrates the per-channel time)."""
    T, trace = analysis.trace.table, analysis.trace
    by_leaf = {g.space: g for g in groups}
    deployed = deploy_copy(model, target)
    inputs = batched(analysis.example_inputs, target)
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}  # layer -> (input shape, output elements)

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            shapes.setdefault(name, (tuple(args[0].shape), out.numel()))
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in deployed.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            call_model(deployed, inputs)
    finally:
        for h in hooks:
            h.remove()
    layers: dict[str, LayerTable] = {}
    for name, (shape, activations) in shapes.items():
        labels = trace.param_labels.get(f"{name}.weight")
        if labels is None:
            continue
        module = deployed.get_submodule(name)
        outs = _widths(T, labels[0], module.weight.shape[0], by_leaf)
        ins = _widths(T, labels[1], module.weight.shape[1], by_leaf)
        if len(outs) == 1 and len(ins) == 1:
            continue  # no group narrows it
        ms = [[_time_layer(module, shape, o, i, target) for i in ins] for o in outs]
        layers[name] = LayerTable(outs, ins, _monotone(ms), activations)
    activations = sum(a for _, a in shapes.values())
    if not (groups and layers):
        return LatencyTable(time_ms(lambda: call_model(deployed, inputs), target.device), layers, activations)
    half = {g.space: torch.arange(g.size) < kept_count(g, 0.5) for g in groups}
    stripped = strip(copy.deepcopy(deployed), trace, half)
    if target.channels_last:  # sliced weights come back contiguous
        stripped = stripped.to(memory_format=torch.channels_last)
    dense_ms, half_ms = fastest_ms([lambda: call_model(deployed, inputs), lambda: call_model(stripped, inputs)],
                                   target.device, iterations=2 * ITERATIONS, budget_s=8 * BUDGET_S)
    table = LatencyTable(dense_ms, layers, activations)
    table.per_channel_ms, table.savings_scale = _calibrate(analysis, table, target, half, half_ms)
    return table


def _calibrate(analysis: ModelAnalysis, table: LatencyTable, target: DeployTarget,
               masks: Mapping[int, torch.Tensor], measured_ms: float) -> tuple[float, float]:
    """The per-channel time and savings scale that make the model predict ``measured_ms`` for ``masks``.

    The per-channel time explains what the layers' own savings do not, within [0, the time outside
    the layers]; beyond that range the savings scale (in [1/4, 4]) absorbs the rest.
    """
    kept = {space: float(m.float().mean()) for space, m in masks.items()}
    base = dataclasses.replace(table, per_channel_ms=0.0, savings_scale=1.0)
    without = LatencyModel(analysis, base, target, {})
    layers_saving = without.cost({}) - without.cost(kept)
    outputs = [without._fractions(i, kept)[0] for i in range(len(without.layers))]
    output_saving = sum(layer.table.activations * (1 - fo) for layer, fo in zip(without.layers, outputs))
    output_saving /= max(table.activations, 1)
    wanted = table.dense_ms - measured_ms
    per_channel = (wanted - layers_saving) / output_saving if output_saving > 0 else 0.0
    per_channel = min(max(per_channel, 0.0), max(without.remainder, 0.0))
    saving = layers_saving + per_channel * output_saving
    scale = min(max(wanted / saving, 0.25), 4.0) if saving > 0 else 1.0
    return per_channel, scale


def _monotone(ms: list[list[float]]) -> list[list[float]]:
    """Each entry at most the entries of larger widths: a narrower layer is not taken to be slower (a
    measurement that says so was disturbed, e.g. by another process on a busy CPU)."""
    for o in reversed(range(len(ms))):
        for i in reversed(range(len(ms[o]))):
            wider = ([ms[o + 1][i]] if o + 1 < len(ms) else []) + ([ms[o][i + 1]] if i + 1 < len(ms[o]) else [])
            ms[o][i] = min([ms[o][i], *wider])
    return ms


def _time_layer(module: nn.Module, in_shape: tuple[int, ...], out_width: int, in_width: int,
                target: DeployTarget) -> float:
    """Milliseconds of a fresh layer like ``module`` with ``out_width`` filters of ``in_width`` inputs."""
    kw = {"device": target.device, "dtype": target.dtype}
    if isinstance(module, nn.Linear):
        layer: nn.Module = nn.Linear(in_width, out_width, bias=module.bias is not None, **kw)
        x = torch.randn(*in_shape[:-1], in_width, **kw)
    else:
        assert isinstance(module, nn.Conv2d)
        depthwise = module.groups > 1 and module.groups == module.out_channels and module.weight.shape[1] == 1
        groups = out_width if depthwise else module.groups
        out_width = math.ceil(out_width / groups) * groups
        layer = nn.Conv2d(in_width * groups, out_width, module.kernel_size, module.stride, module.padding,
                          module.dilation, groups, module.bias is not None, module.padding_mode, **kw)
        x = torch.randn(in_shape[0], in_width * groups, *in_shape[2:], **kw)
        if target.channels_last:
            layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return time_ms(lambda: layer(x), target.device)
