"""Sharing pruned models on the Hugging Face Hub: the saved folder plus a model card with pruning statistics.

The card's numbers are measured, not copied: FLOPs and parameters of the model and of the dense
model its config describes (both run on the meta device, so no weights are computed with), output
channels per stage, and the pruning config and statistics the model's pruning record keeps.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..algorithm.controller import FilterPruningController
from ..graph.record import dense_reference, model_library, pruning_record
from ..graph.surgery import resize_to_spec, shape_spec
from ..model_kind import input_size
from ..text import markdown_table
from .serialization import ensure_stripped, logits, save_pretrained

__all__ = ["TAGS", "model_card", "model_statistics", "push_to_hub"]

TAGS = ["hf_prune", "pruned", "filter-pruning"]
_STAGE_PART = re.compile(r"\d+|[A-Za-z]+\d+")
"""A module-path component that names a stage or block: ``0``, ``layer1``, ``denseblock2``."""


def _stage(name: str) -> str:
    """The stage a module belongs to: its path up to the first stage-like component, else its parent."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _STAGE_PART.fullmatch(part):
            return ".".join(parts[:i + 1])
    return ".".join(parts[:-1]) or name


def _stage_widths(dense: nn.Module, model: nn.Module) -> list[dict[str, Any]]:
    """Per stage: output channels of its conv and linear layers, dense and pruned."""
    widths: dict[str, dict[str, int]] = {}
    for key, net in (("before", dense), ("after", model)):
        for name, module in net.named_modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                widths.setdefault(_stage(name), {"before": 0, "after": 0})[key] += module.weight.shape[0]
    return [{"stage": stage, **w} for stage, w in widths.items()]


def _flops(meta_model: nn.Module, size: tuple[int, int, int]) -> int:
    """FLOPs of one image through a model on the meta device (torch's FLOP counter)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits(meta_model.eval(), torch.empty(1, *size, device="meta"))
    return counter.get_total_flops()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_statistics(model: nn.Module) -> dict[str, Any]:
    """FLOPs (per image), parameters and per-stage widths of ``model`` and of its dense architecture,
    with the pruning config and statistics of its pruning record (None if it has none)."""
    dense = dense_reference(model)
    pruned = dense_reference(model)  # made a shape-only twin of ``model`` on the meta device:
    resize_to_spec(pruned, shape_spec(model, pruned))
    size = input_size(model)
    pruning = (pruning_record(model) or {}).get("pruning") or {}
    return {
        "model_class": type(model).__name__,
        "library": model_library(model),
        "input_size": list(size),
        "flops": {"before": _flops(dense, size), "after": _flops(pruned, size)},
        "params": {"before": _params(dense), "after": _params(model)},
        "stages": _stage_widths(dense, model),
        "pruning_config": pruning.get("config"),
        "pruning_statistics": pruning.get("statistics"),
    }


def _base_model(model: nn.Module) -> str | None:
    """The Hub checkpoint the model's config names, if any."""
    if model_library(model) == "transformers":
        name = str(getattr(model.config, "_name_or_path", "") or "")
    else:
        name = str(model.pretrained_cfg.get("hf_hub_id") or "")
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name) else None


def _change(before: float, after: float) -> str:
    return f"{after / before - 1:+.1%}" if before else "–"


def _statistics_section(stats: dict[str, Any]) -> str:
    flops, params = stats["flops"], stats["params"]
    lines = [
        "## Pruning statistics", "",
        f"Measured at input size {'×'.join(map(str, stats['input_size']))}, batch 1.", "",
        markdown_table(["", "dense", "pruned", "change"], [
            ("FLOPs", f"{flops['before'] / 1e9:.3f} G", f"{flops['after'] / 1e9:.3f} G", _change(**flops)),
            ("Parameters", f"{params['before'] / 1e6:.3f} M", f"{params['after'] / 1e6:.3f} M", _change(**params)),
        ], "lrrr"),
    ]
    recorded = stats["pruning_statistics"]
    if recorded:
        kind = "FLOPs" if recorded.get("prune_flops") else "filters"
        lines += ["", f"Pruning level {recorded['current_level']:.3f} (target {recorded['target_level']:.3f} of "
                      f"{kind}); filters {recorded['filters_before']} → {recorded['filters_after']}."]
    lines += ["", "### Width per stage", "", "Output channels of the conv and linear layers of each stage.", "",
              markdown_table(["stage", "dense", "pruned", "kept"],
                             [(f"`{s['stage']}`", s["before"], s["after"], f"{s['after'] / s['before']:.0%}")
                              for s in stats["stages"] if s["before"]], "lrrr")]
    return "\n".join(lines)


def _recipe_text(recipe: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, str]:
    """(language, text) of a recipe file or dict, for a fenced code block."""
    if isinstance(recipe, Mapping):
        return "yaml", yaml.safe_dump(dict(recipe), sort_keys=False)
    path = Path(recipe)
    return ("json" if path.suffix == ".json" else "yaml"), path.read_text(encoding="utf-8")


def _usage(repo_id: str, library: str) -> str:
    if library == "transformers":
        code = ("from transformers import AutoModelForImageClassification\n\n"
                f'model = AutoModelForImageClassification.from_pretrained("{repo_id}")')
        how = ("`pip install hf_prune`, then load the model with transformers as usual: installing hf_prune "
               "registers its loader (with `HF_PRUNE_NO_AUTOLOAD=1` set, `import hf_prune` first). Without "
               "hf_prune, transformers cannot load these weights.")
    else:
        code = f'import hf_prune\n\nmodel = hf_prune.from_pretrained("{repo_id}")'
        how = "`pip install hf_prune`."
    return f"## Usage\n\nThe stripped shapes are rebuilt by hf_prune: {how}\n\n```python\n{code}\n```"


def model_card(model: nn.Module, repo_id: str, *, base_model: str | None = None,
               recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> ModelCard:
    """The model card of a stripped model: metadata (tags, ``base_model``), statistics, config, recipe, usage.

    ``base_model`` defaults to the Hub checkpoint the model's config names; ``recipe`` is a recipe
    file or dict shown as used.
    """
    stats = model_statistics(model)
    library = stats["library"]
    data = ModelCardData(library_name=library, tags=[*TAGS, library, "image-classification"],
                         base_model=base_model or _base_model(model), pipeline_tag="image-classification")
    sections = [
        f"# {repo_id.rpartition('/')[2]}",
        f"A `{stats['model_class']}` pruned with hf_prune "
        "(NNCF-style filter pruning). The pruned channels are removed, not zeroed: this is the same "
        "architecture with narrower layers, smaller and faster.",
        _statistics_section(stats),
    ]
    if stats["pruning_config"]:
        sections.append(f"## Pruning config\n\n```json\n{json.dumps(stats['pruning_config'], indent=2)}\n```")
    if recipe is not None:
        language, text = _recipe_text(recipe)
        sections.append(f"## Recipe\n\n```{language}\n{text.rstrip()}\n```")
    sections.append(_usage(repo_id, library))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def push_to_hub(model: nn.Module, repo_id: str, *, controller: FilterPruningController | None = None,
                recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None, base_model: str | None = None,
                private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload model pruned with hf_prune", revision: str | None = None,
                model_args: dict[str, Any] | None = None) -> Any:
    """Upload the stripped ``model`` to the Hub repository ``repo_id`` (created if missing) with a model card.

    A model whose masks are still active is stripped first (a copy; ``controller`` required).
    ``controller`` adds its config and statistics to the saved record; ``recipe``, ``base_model``:
    see :func:`model_card`; ``model_args``: see :func:`~hf_prune.integrations.serialization.save_pretrained`.
    ``revision``: the branch to commit to. Returns the commit info of ``HfApi.upload_folder``.
    """
    model = ensure_stripped(model, controller, "push")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", controller=controller, model_args=model_args)
        model_card(model, repo_id, base_model=base_model, recipe=recipe).save(folder / "README.md")
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision)
