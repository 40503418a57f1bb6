"""The coverage matrix (docs/coverage.md): what the pruning engine does with every architecture the installed
timm, torchvision and transformers offer.

Regenerate: ``python docs/coverage.py [-n JOBS]`` (minutes; tests/test_coverage.py fails when the doc is
stale). ``--only KEY …`` measures and prints the named rows (families / classes); ``--write`` puts them in
the doc.

Rows: one per timm family (``timm.list_modules()``; its ``test_*`` model if it has one, else its smallest
classifier), one per torchvision classification family (module; its smallest model), and one per transformers
``*ForImageClassification`` class ``AutoModelForImageClassification`` builds, from a small config. Every row
is measured in its own forked process, with a time limit, so that one model that fails to build, crashes or
hangs costs only its row.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT.parent / "tests")]

from hf_prune.text import markdown_table  # noqa: E402  (after the path set-up above)

DOC = ROOT / "coverage.md"
COMMAND = "python docs/coverage.py -n 2"
"""How to regenerate docs/coverage.md (what the test says when it is stale)."""
LEVEL = 0.3
"""Pruning level (share of filters) of the strip columns."""
PARAMS = {"pruning_target": LEVEL, "prune_first_conv": True, "prune_downsample_convs": True}
"""The pruning config's ``params``: everything the engine can prune (NNCF's defaults keep the first conv,
which is a ViT's patch embedding and so decides its embedding dimension, and the downsampling convs)."""
ROW_TIMEOUT = 600
"""Seconds one row may take before it is reported as timed out."""
ONNX_TIMEOUT = 240
"""Seconds a row's ONNX export may take before its cell says so."""
LIBRARIES = ("timm", "torchvision", "transformers")
HEADER = ["family", "model", "input", "prunable groups", "FLOPs prunable", "heads pruned", "exact strip",
          f"params kept at {LEVEL:.0%}", "reload", "ONNX"]
NA = "—"

_VIT = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128)
_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
_SWIN = dict(image_size=32, patch_size=4, embed_dim=32, depths=[1, 2], num_heads=[2, 4], window_size=4)
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "beit": _VIT, "data2vec-vision": _VIT, "deit": _VIT, "ijepa": _VIT, "vit": _VIT, "vit_msn": _VIT,
    "dinov2": {k: v for k, v in _VIT.items() if k != "intermediate_size"},
    "dinov2_with_registers": {k: v for k, v in _VIT.items() if k != "intermediate_size"},
    "clip": dict(vision_config=_VIT, text_config=_TEXT),
    "metaclip_2": dict(vision_config=_VIT, text_config=_TEXT),
    "siglip": dict(vision_config=_VIT, text_config=_TEXT),
    "siglip2": dict(vision_config={**_VIT, "num_patches": 16}, text_config=_TEXT),
    "shieldgemma2": dict(vision_config=_VIT, text_config=dict(_TEXT, num_key_value_heads=1, head_dim=16,
                                                              vocab_size=1000), mm_tokens_per_image=16,
                         yes_token_index=10, no_token_index=11),
    "swin": _SWIN, "swinv2": _SWIN, "donut-swin": _SWIN,
    "dinat": dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], image_size=64),
    "hiera": dict(image_size=[64, 64], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]),
    "bit": dict(embedding_size=32, hidden_sizes=[128, 256, 512, 1024], depths=[1, 1, 1, 1], image_size=64),
    "resnet": dict(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1],
                   layer_type="bottleneck", image_size=64),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], groups_width=8,
                   image_size=64),
    "convnext": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64),
    "convnextv2": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64),
    "cvt": dict(embed_dim=[16, 32, 64], num_heads=[1, 2, 4], depth=[1, 2, 3], image_size=64),  # depth[i] > i
    "efficientnet": dict(image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),
    "focalnet": dict(embed_dim=16, depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 128], image_size=64),
    "hgnet_v2": dict(image_size=64),
    "imagegpt": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "levit": dict(image_size=64, hidden_sizes=[32, 64, 96], num_attention_heads=[2, 4, 6], depths=[1, 1, 1],
                  key_dim=[16, 16, 16]),
    "mobilenet_v1": dict(image_size=64, depth_multiplier=0.25),
    "mobilenet_v2": dict(image_size=64, depth_multiplier=0.35),
    "mobilevit": dict(image_size=32),
    "mobilevitv2": dict(image_size=64, width_multiplier=0.5),
    "poolformer": dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], image_size=64),
    "pp_lcnet": dict(image_size=64),
    "pvt": dict(image_size=32),
    "pvt_v2": dict(image_size=32, depths=[1, 1, 1, 1]),
    "segformer": dict(depths=[1, 1, 1, 1], image_size=64),
    "swiftformer": dict(embed_dims=[16, 16, 32, 32], depths=[1, 1, 1, 1], image_size=64),
    "textnet": dict(image_size=[64, 64]),
    "timm_wrapper": dict(architecture="test_resnet", image_size=64),
}
"""Small config keyword arguments per transformers ``model_type`` (everything else: the config's defaults)."""


# ------------------------------------------------------------------------------------------------ rows
def timm_families() -> list[str]:
    import timm

    return sorted(timm.list_modules())


def torchvision_families() -> dict[str, list[str]]:
    """Classification model builders of torchvision, by module (``resnet``: resnet18, …, wide_resnet101_2)."""
    import torchvision.models as tvm

    families: dict[str, list[str]] = {}
    for name in tvm.list_models(module=tvm):
        families.setdefault(tvm.get_model_builder(name).__module__.rpartition(".")[2], []).append(name)
    return families


def transformers_classes() -> dict[str, str]:
    """``*ForImageClassification`` class name → model type, for every class AutoModelForImageClassification builds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    classes = {}
    for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        for name in names if isinstance(names, tuple) else (names,):
            if name.endswith("ForImageClassification"):
                classes[name] = model_type
    return dict(sorted(classes.items()))


def row_keys() -> dict[str, list[str]]:
    """The matrix's rows, per library, as the installed libraries enumerate them."""
    return {"timm": timm_families(), "torchvision": sorted(torchvision_families()),
            "transformers": list(transformers_classes())}


# ----------------------------------------------------------------------------------------- models
@dataclass
class Built:
    model: Any
    inputs: Any  # batch of 2, as the model takes them
    name: str  # the model the row measured
    logits: Callable[[Any, Any], Any]
    note: str = ""  # how it differs from the named model, e.g. "(depth 2)"
    size: str = ""  # the input's size where the inputs do not show it


def _first_batch(inputs: Any) -> Any:
    return {k: v[:1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[:1]


def _meta_size(build: Callable[[], Any], prefer: Callable[[Any], bool]) -> tuple[bool, float]:
    """(whether ``prefer`` rejects it, its parameters) for the model ``build`` makes on the meta device (no memory);
    (True, inf) if it fails."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
    except Exception:  # noqa: BLE001 - a model that cannot be built is never the smallest
        return True, float("inf")
    return not prefer(model), sum(p.numel() for p in model.parameters())


def smallest(names: Iterable[str], build: Callable[[str], Any], prefer: Callable[[Any], bool] = lambda _: True) -> str:
    """The name whose model has the fewest parameters among those ``prefer`` accepts, if any does (the first such
    name in sorted order)."""
    return min(sorted(names), key=lambda n: _meta_size(lambda: build(n), prefer))


def timm_representative(family: str) -> str:
    """The family's first ``test_*`` model, else its smallest classifier (a feature encoder such as
    ``gemma4_vit_167m_enc`` has no class head: its output width is its interface), else its smallest model."""
    import timm

    names = timm.list_models(module=family)
    tests = [n for n in names if n.startswith("test_")]
    return sorted(tests)[0] if tests else smallest(names, lambda n: timm.create_model(n, num_classes=10),
                                                   prefer=lambda model: getattr(model, "num_classes", 0) == 10)


def _works(model: Any, x: Any) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:  # noqa: BLE001 - the caller tries the next input size
        return False


TIMM_SIZES = ({"img_size": 64, "depth": 2}, {"img_size": 64}, {"depth": 2}, {})
"""Constructor arguments tried in turn on a timm model (the first it builds and runs with wins): 64×64 images
and 2 blocks where it takes them (``depth``: the number of blocks of ViT-like models). A model built without
``img_size`` that runs on 64×64 images is measured at that size (its ``pretrained_cfg`` says so)."""


def build_timm(name: str) -> Built:
    """``name`` with 10 classes and the first of :data:`TIMM_SIZES` it builds and runs with."""
    import timm
    import torch

    from hf_prune.model_kind import input_size

    for kwargs in TIMM_SIZES:
        try:
            model = timm.create_model(name, num_classes=10, **kwargs).eval()
        except (TypeError, ValueError, AssertionError, RuntimeError, KeyError):
            continue
        note = "(depth 2)" if "depth" in kwargs else ""
        small = torch.randn(2, 3, 64, 64)
        if "img_size" not in kwargs and _works(model, small[:1]):  # a convnet: any size, 64×64 recorded
            model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
            return Built(model, small, name, lambda m, x: m(x), note)
        x = torch.randn(2, *input_size(model))
        if _works(model, x[:1]):
            return Built(model, x, name, lambda m, x: m(x), note)
    raise RuntimeError(f"timm {name} builds or runs with none of {TIMM_SIZES}")


def build_torchvision(name: str) -> Built:
    """torchvision's ``name`` with 10 classes, at the first of 64, 224, 299 pixels where it builds and runs."""
    import torch
    import torchvision.models as tvm

    for size in (64, 224, 299):
        for kwargs in ({"image_size": size}, {"input_size": (size, size)}, {}):
            try:
                model = tvm.get_model(name, num_classes=10, **kwargs).eval()
            except (TypeError, ValueError):
                continue
            x = torch.randn(2, 3, size, size)
            if _works(model, x[:1]):
                return Built(model, x, name, lambda m, x: m(x))
            break
    raise RuntimeError(f"torchvision {name} runs at none of 64, 224, 299 pixels")


def small_config(model_type: str) -> Any:
    """The model type's config with :data:`SMALL_CONFIGS`'s sizes and 10 labels."""
    from transformers import AutoConfig

    kwargs = dict(SMALL_CONFIGS.get(model_type, {}))
    image_size = kwargs.pop("image_size", None)
    config = AutoConfig.for_model(model_type, num_labels=10, **kwargs)
    if image_size is not None:
        target = getattr(config, "vision_config", config)
        target.image_size = image_size
        config.image_size = image_size
    return config


def build_transformers(class_name: str) -> Built:
    import torch
    import transformers

    from hf_prune.integrations.serialization import logits
    from hf_prune.model_kind import input_size

    model_type = transformers_classes()[class_name]
    config = small_config(model_type)
    model = getattr(transformers, class_name)(config).eval()
    vision = getattr(config, "vision_config", None)
    if vision is not None and getattr(vision, "image_size", None):  # CLIP-like: the vision tower's input
        model.config.image_size = vision.image_size
    if model_type == "siglip2":  # patches of images at their own aspect ratio, made by its image processor
        from transformers import Siglip2ImageProcessor

        processor = Siglip2ImageProcessor(patch_size=config.vision_config.patch_size,
                                          max_num_patches=config.vision_config.num_patches)
        images = torch.randint(0, 256, (2, 3, config.image_size, config.image_size), dtype=torch.uint8)
        inputs = dict(processor(list(images), return_tensors="pt"))
        size = f"{config.image_size}×{config.image_size} ({inputs['pixel_values'].shape[1]} patches)"
        return Built(model, inputs, model_type, lambda m, x: m(**x).logits, size=size)
    parameters = inspect.signature(model.forward).parameters
    if "input_ids" in parameters and getattr(config, "mm_tokens_per_image", None):  # ShieldGemma 2: image + prompt
        prompt = [config.image_token_index] * config.mm_tokens_per_image + [5, 6, 7]  # the image's tokens, text
        x = torch.randn(2, *input_size(model))
        return Built(model, {"input_ids": torch.tensor([prompt] * 2), "pixel_values": x}, model_type,
                     lambda m, x: m(**x).logits, size=f"{x.shape[-1]}×{x.shape[-1]} + {len(prompt)} ids")
    if "pixel_values" not in parameters:  # ImageGPT: colour-cluster ids
        ids = torch.randint(0, config.vocab_size - 1, (2, config.n_positions))
        return Built(model, {"input_ids": ids}, model_type, lambda m, x: m(**x).logits)
    size = input_size(model)
    return Built(model, {"pixel_values": torch.randn(2, *size)}, model_type,
                 lambda m, x: logits(m, x["pixel_values"]))


# ------------------------------------------------------------------------------------------- cells
_ADDRESS = re.compile(r"0x[0-9a-f]+|/tmp/[^\s'\"),]+")


def _cell_text(text: str, width: int) -> str:
    """``text`` as a table cell: no ``|``, at most ``width`` characters (cut with an ellipsis)."""
    text = text.replace("|", "/")
    return text if len(text) <= width else text[:width - 1] + "…"


def reason(exc: BaseException, width: int = 90) -> str:
    """``ErrorType: first line of the message`` of the error's root cause, shortened, without addresses or
    temporary paths."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return _cell_text(_ADDRESS.sub("…", f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")), width)


def _heads_cell(analysis: Any) -> str:
    heads = [g for g in analysis.groups if g.attention is not None]
    pruned = [g for g in heads if g.prunable]
    if not heads:
        return "none found"
    if pruned:
        return f"yes ({len(pruned)}/{len(heads)} modules)"
    why = heads[0].reasons[0]
    if why.startswith("strip check"):  # what failed: the stripped model's error
        why = "strip check: " + why.rpartition("cannot be removed: ")[2]
    else:
        why = why.split(":")[0]
    return f"refused ({_cell_text(why, 90)})"


def _main_reason(analysis: Any, width: int = 70) -> str:
    """The reason most unprunable layers give (the first of equals), shortened."""
    reasons = [why[0] for why in analysis.unprunable_layers.values() if why]
    if not reasons:
        return "no reason given"
    return _cell_text(max(reasons, key=reasons.count), width)


def _reload_cell(stripped: Any, inputs: Any, logits: Callable) -> str:
    """``yes`` if a save and reload (hf_prune's) gives the same logits, else why not."""
    import torch

    from hf_prune.integrations.serialization import from_pretrained, save_pretrained

    with tempfile.TemporaryDirectory() as directory:
        try:
            save_pretrained(stripped, directory)
            loaded = from_pretrained(directory).eval()
            with torch.no_grad():
                same = torch.allclose(logits(loaded, inputs), logits(stripped, inputs), rtol=1e-5, atol=1e-5)
        except Exception as exc:  # noqa: BLE001 - the matrix shows the failure
            return f"no ({reason(exc)})"
    return "yes" if same else "**no** (different outputs)"


def _onnx_cell(stripped: Any, inputs: Any) -> str:
    """``yes`` if hf_prune.export_onnx exports the stripped model (given the row's inputs where they are more
    than images) and ONNX Runtime agrees, else why not.

    In a row's process the export has :data:`ONNX_TIMEOUT` seconds (within the row's own limit): torch.export's
    symbolic shapes can take a very long time on models that pad to window multiples at every stage (DaViT).
    Such a model is then exported at its fixed image size (``dynamic_image_size=False``), and the cell says so.
    """
    more = isinstance(inputs, dict) and set(inputs) != {"pixel_values"}
    cell = _export_cell(stripped, inputs if more else None, dynamic_image_size=True)
    if cell is None:
        fixed = _export_cell(stripped, None, dynamic_image_size=False)
        over = f"a dynamic height and width took over {ONNX_TIMEOUT} s"
        return f"yes (fixed image size: {over})" if fixed == "yes" else f"no ({over}; fixed size: {fixed})"
    return cell


def _export_cell(stripped: Any, inputs: Any, dynamic_image_size: bool) -> str | None:
    """``yes``, ``no (why)``, or None if the export ran past :data:`ONNX_TIMEOUT`."""
    from hf_prune.integrations.onnx import export_onnx

    row_left = signal.alarm(0)  # seconds the row has left (0: no row limit, outside a row's process)
    limit = min(row_left, ONNX_TIMEOUT) if row_left else 0
    start = time.monotonic()
    signal.alarm(limit)
    with tempfile.TemporaryDirectory() as directory:
        try:
            export_onnx(stripped, directory, example_inputs=inputs, dynamic_image_size=dynamic_image_size)
        except OverTime:
            if limit < ONNX_TIMEOUT:
                raise  # the row's own limit
            return None
        except Exception as exc:  # noqa: BLE001 - the matrix shows the failure
            return f"no ({reason(exc)})"
        finally:
            signal.alarm(max(1, row_left - round(time.monotonic() - start)) if row_left else 0)
    return "yes"


def _strip_difference(masked: Any, stripped: Any, inputs: Any, logits: Callable) -> float:
    """Largest difference of the stripped model's logits from the masked model's, relative to their scale.

    Compared in float64 where the model runs in it: random weights can make a model chaotic (timm's
    halonet: float32 and float64 runs of the same dense model differ by 0.2 of the output scale), so a
    float32 comparison would blame the strip for rounding noise. Runs on copies: a model can cache tensors
    of the dtype it last ran in outside its parameters and buffers (LeViT's attention biases).
    """
    import copy

    import torch
    from torch.utils._pytree import tree_map

    def run(dtype: torch.dtype) -> tuple[Any, Any]:
        x = tree_map(lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t, inputs)
        with torch.no_grad():
            return (logits(copy.deepcopy(masked).to(dtype), x).double(),
                    logits(copy.deepcopy(stripped).to(dtype), x).double())

    try:
        expected, got = run(torch.float64)
    except (RuntimeError, TypeError):  # an op or a hard-coded cast without float64: compare in float32
        expected, got = run(torch.float32)
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def measure(built: Built, library: str) -> list[str]:
    """The cells after ``input`` of one built model (see :data:`HEADER`)."""
    import torch

    import hf_prune
    from conftest import randomize_norms

    model, inputs, logits = built.model, built.inputs, built.logits
    randomize_norms(model)  # random norms and layer scales: no branch vanishes, so a wrong strip shows
    try:
        with warnings.catch_warnings():  # "nothing prunable": the row says so
            warnings.simplefilter("ignore")
            ctrl = hf_prune.create_pruning_controller(model, {"params": PARAMS},
                                                      example_inputs=_first_batch(inputs),
                                                      allow_nothing_prunable=True)
    except Exception as exc:  # noqa: BLE001 - the matrix shows the failure
        return [f"analysis failed ({reason(exc)})"] + [NA] * (len(HEADER) - 4)
    analysis = ctrl.analysis
    prunable = analysis.prunable_groups
    share = 1 - analysis.flops_model.flops({g.space: 0.0 for g in prunable}) / (analysis.dense_flops or 1.0)
    groups = f"{len(prunable)}/{len(analysis.groups)}" + ("" if prunable else f" ({_main_reason(analysis)})")
    cells = [groups, f"{share:.0%}", _heads_cell(analysis)]
    try:
        ctrl.set_pruning_level(LEVEL)
        stripped = ctrl.strip_model(model, do_copy=True).eval()
        diff = _strip_difference(model, stripped, inputs, logits)
    except Exception as exc:  # noqa: BLE001 - the matrix shows the failure
        return cells + [f"**no** ({reason(exc)})"] + [NA] * 3
    params = sum(p.numel() for p in stripped.parameters())
    if diff > 1e-4:
        exact = f"**no** (outputs differ by {diff:.0e} of their scale)"
    elif params != round(ctrl.current_params):
        exact = f"**no** ({params} parameters, {round(ctrl.current_params)} predicted)"
    else:
        exact = "yes"
    kept = params / sum(p.numel() for p in model.parameters())
    if library == "torchvision":
        reload = onnx = "n/a"  # hf_prune saves and exports timm and transformers models
    else:
        reload, onnx = _reload_cell(stripped, inputs, logits), _onnx_cell(stripped, inputs)
    return cells + [exact, f"{kept:.2f}", reload, onnx]


def compute_row(library: str, key: str, model: str | None = None) -> list[str]:
    """One row of the matrix; ``model``: the row's model (default: chosen as the matrix chooses it)."""
    import torch

    torch.manual_seed(0)
    try:
        if library == "timm":
            model = model or timm_representative(key)
            built = build_timm(model)
        elif library == "torchvision":
            model = model or smallest(torchvision_families()[key], _torchvision_builder)
            built = build_torchvision(model)
        else:
            model = model or transformers_classes()[key]
            built = build_transformers(key)
    except Exception as exc:  # noqa: BLE001 - the matrix shows the failure
        return failed_row(key, model, f"not built ({reason(exc)})")
    size = built.size or _size_text(built.inputs)
    return [key, f"`{built.name}` {built.note}".rstrip(), size] + measure(built, library)


def failed_row(key: str, model: str | None, why: str) -> list[str]:
    """The row of a model that could not be measured at all."""
    return [key, f"`{model}`" if model else NA, NA, why] + [NA] * (len(HEADER) - 4)


def _torchvision_builder(name: str) -> Any:
    import torchvision.models as tvm

    return tvm.get_model(name, num_classes=10)


def _size_text(inputs: Any) -> str:
    if isinstance(inputs, dict) and "input_ids" in inputs:
        return f"{inputs['input_ids'].shape[-1]} ids"
    x = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
    return "×".join(map(str, x.shape[-2:]))


# --------------------------------------------------------------------------------------- processes
class OverTime(BaseException):
    """A row's (or its ONNX export's) time is up; not an Exception, so that no cell takes it for its failure."""


def _timeout(signum: int, frame: Any) -> None:
    raise OverTime


def _child(library: str, key: str, model: str | None, conn: Any) -> None:
    """Measure one row in this (forked) process and send it through ``conn``."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(ROW_TIMEOUT)
    try:
        conn.send(compute_row(library, key, model))
    except OverTime:
        conn.send(failed_row(key, model, f"timed out (over {ROW_TIMEOUT} s)"))
    except BaseException as exc:  # noqa: BLE001 - reported as the row
        traceback.print_exc()
        conn.send(failed_row(key, model, f"failed ({reason(exc)})"))


def compute_rows(tasks: list[tuple[str, str, str | None]], jobs: int = 1,
                 progress: Callable[[str], None] | None = None) -> dict[tuple[str, str], list[str]]:
    """Rows of ``tasks`` ((library, key, model or None)), each in its own forked process, ``jobs`` at a time."""
    context = multiprocessing.get_context("fork")
    pending, running, rows = list(tasks), [], {}
    while pending or running:
        while pending and len(running) < jobs:
            library, key, model = task = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(library, key, model, send), daemon=True)
            process.start()
            send.close()
            running.append((task, process, receive, time.monotonic()))
        for item in list(running):
            (library, key, model), process, receive, start = item
            if receive.poll(0.2):
                try:
                    rows[(library, key)] = receive.recv()
                except EOFError:
                    rows[(library, key)] = failed_row(key, model, f"crashed (exit {process.exitcode})")
            elif process.is_alive() and time.monotonic() - start < ROW_TIMEOUT + 60:
                continue
            elif process.is_alive():  # stuck where the child's alarm cannot interrupt it (inside an op)
                process.kill()
                rows[(library, key)] = failed_row(key, model, f"timed out (over {ROW_TIMEOUT} s)")
            else:
                rows[(library, key)] = failed_row(key, model, f"crashed (exit {process.exitcode})")
            process.join(timeout=30)
            running.remove(item)
            if progress:
                progress(f"{time.monotonic() - start:.0f} s: {library} | " + " | ".join(rows[(library, key)]))
    return rows


# --------------------------------------------------------------------------------------------- doc
def versions() -> str:
    import timm
    import torch
    import torchvision
    import transformers

    return ", ".join(f"{module.__name__} {module.__version__.split('+')[0]}"  # no local tag (+cu130)
                     for module in (transformers, timm, torchvision, torch))


def _exporter() -> str:
    from hf_prune.integrations.onnx import exporter

    return {"torch": "torch.onnx", "optimum": "Optimum"}[exporter()]


def render(rows: dict[tuple[str, str], list[str]]) -> str:
    """docs/coverage.md from every row."""
    lines = [
        "# Coverage",
        "",
        f"<!-- generated by docs/coverage.py; do not edit. Regenerate: {COMMAND} -->",
        "",
        f"Measured with {versions()} (the default test stack; ONNX export through {_exporter()}).",
        "",
        "One row per timm family (its `test_*` model, else its smallest classifier), per torchvision classification family",
        "(its smallest model) and per transformers `*ForImageClassification` class (a small config), random",
        "weights with random norm statistics, 10 classes; timm models at 64×64 and with 2 blocks where their",
        "constructor takes `img_size` and `depth`; `prune_first_conv` and `prune_downsample_convs` on (all the",
        "engine can prune: NNCF's defaults keep the first conv, which is a ViT's patch embedding, and the",
        "downsampling convs). Columns: the prunable groups of all groups found; the share of the model's FLOPs",
        "that depends on a prunable group; whether attention heads are pruned (else why not); whether the strip",
        f"at {LEVEL:.0%} of filters is exact (stripped == masked within 1e-4 of the output scale, compared in",
        "float64, parameters as predicted); the fraction of parameters it keeps; whether the stripped model saves",
        "and reloads (`hf_prune.save_pretrained` / `from_pretrained`) with the same outputs; whether",
        "`hf_prune.export_onnx` exports it and ONNX Runtime's logits match PyTorch's, with a dynamic height and",
        f"width where the model allows, else (over {ONNX_TIMEOUT} s) at its fixed image size (n/a: torchvision",
        "models, which hf_prune saves and exports only as part of the user's own code).",
        "",
        _summary(rows),
    ]
    for library in LIBRARIES:
        lines += ["", f"## {library}", "",
                  markdown_table(HEADER, [row for (lib, _), row in sorted(rows.items()) if lib == library])]
    return "\n".join(lines) + "\n"


def _summary(rows: dict[tuple[str, str], list[str]]) -> str:
    """Counts per library: rows, exact strips, reloads, ONNX exports; ViT-family rows above 0.75 params."""
    table = []
    for library in LIBRARIES:
        mine = [r for (lib, _), r in rows.items() if lib == library]
        built = [r for r in mine if r[2] != NA]
        pruned = [r for r in built if not r[3].startswith(("0/", "analysis"))]
        heads = [r for r in built if r[5].startswith("yes")]
        table.append((library, len(mine), len(built), len(pruned), sum(r[6] == "yes" for r in built),
                      _count(built, 8), _count(built, 9),
                      f"{sum(_kept(r) <= 0.75 for r in heads)}/{len(heads)}" if heads else NA))
    return markdown_table(["library", "rows", "built", "with a prunable group", "exact strip", "reload", "ONNX",
                           "heads pruned: params kept ≤ 0.75"], table, align="lrrrrrrr")


def _count(rows: list[list[str]], column: int) -> str:
    """How many ``rows`` say yes (with or without a note) in ``column``; n/a where every one says n/a."""
    if rows and all(r[column] == "n/a" for r in rows):
        return "n/a"
    return str(sum(r[column].startswith("yes") for r in rows))


def _kept(row: list[str]) -> float:
    try:
        return float(row[7])
    except ValueError:
        return 1.0


def parse(text: str) -> dict[tuple[str, str], list[str]]:
    """The rows of a rendered doc, by (library, key)."""
    rows, library = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            library = line[3:].strip()
        elif library and line.startswith("| ") and not line.startswith(f"| {HEADER[0]} |"):
            cells = [c.strip() for c in line.strip()[2:-2].split(" | ")]
            rows[(library, cells[0])] = cells
    return rows


def all_tasks() -> list[tuple[str, str, None]]:
    """Every row to measure, transformers first (the fewest and quickest rows)."""
    keys = row_keys()
    return [(library, key, None) for library in reversed(LIBRARIES) for key in keys[library]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--jobs", type=int, default=1, help="rows measured at once (default 1)")
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="measure only these rows and print them: families / classes (resnet, "
                             "ViTForImageClassification), or LIBRARY/KEY (timm/resnet)")
    parser.add_argument("--write", action="store_true",
                        help="with --only: write the rows into docs/coverage.md, keeping its other rows")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before huggingface_hub is imported
    tasks = all_tasks()
    if args.only:
        names = {key for _, key, _ in tasks} | {f"{library}/{key}" for library, key, _ in tasks}
        unknown = set(args.only) - names
        if unknown:
            parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
        tasks = [t for t in tasks if t[1] in args.only or f"{t[0]}/{t[1]}" in args.only]
    rows = compute_rows(tasks, args.jobs, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.only and not args.write:
        print(markdown_table(["library"] + HEADER, [[lib, *row] for (lib, _), row in rows.items()]))
        return 0
    if args.only:
        rows = {**parse(DOC.read_text(encoding="utf-8")), **rows}
    DOC.write_text(render(rows), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
