"""Recipes: one YAML file describing a whole pruning run (model, data, training, pruning, outputs).

```yaml
model:    {name: timm/resnet18, pretrained: false, num_classes: 10, image_size: 32}
data:     {source: digits}                 # or {source: hub, name: cifar10, ...} / {source: imagefolder, path: ...}
training: {output_dir: outputs/demo, num_train_epochs: 6, ...}   # transformers TrainingArguments fields
dense_epochs: 2                            # optional dense warm-up before pruning starts
pruning:  {algorithm: filter_pruning, params: {...}}              # NNCF's filter_pruning section
outputs:  {save: true, onnx: true, report: true, push_to_hub: null}
```

:func:`load_recipe` validates every section before anything runs (errors name the file, the key path such
as ``data.path`` or ``training.num_train_epocs``, and what was expected) and returns a :class:`Recipe` of typed
objects: ``ModelSpec``, ``DataSpec``, ``transformers.TrainingArguments`` (built by ``HfArgumentParser``),
:class:`~hf_prune.PruningConfig` and ``OutputSpec``, which the run uses as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from transformers import HfArgumentParser, TrainingArguments

from ..config import PruningConfig, PruningConfigError
from ..errors import HfPruneError
from ..text import did_you_mean

DEFAULT_OUTPUT_DIR = "outputs"
"""``training.output_dir`` when a recipe does not set it."""
_SECRETS = ("hub_token", "push_to_hub_token")  # never written back by Recipe.to_dict


class RecipeError(HfPruneError, ValueError):
    """An invalid recipe; the message names the file and key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    name: str | None = Field(None, description="timm name (timm/<name>), Hub id or local directory")
    config: dict[str, Any] | None = Field(None, description="a transformers config dict (model_type, ...) to build from scratch")
    pretrained: bool = False
    num_classes: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.name is None) == (self.config is None):
            raise ValueError("give exactly one of 'name' or 'config'")
        return self


class DataSpec(_Section):
    source: Literal["digits", "hub", "imagefolder"] = "digits"
    name: str | None = Field(None, description="Hub data set id (source: hub)")
    path: str | None = Field(None, description="image folder (source: imagefolder)")
    train_split: str = "train"
    eval_split: str | None = "test"
    image_column: str | None = None
    label_column: str | None = None
    image_size: int | None = Field(None, ge=8, description="default: the model's input size")
    limit: int | None = Field(None, ge=1, description="use at most this many training samples")
    mean: list[float] | None = Field(None, min_length=1, description="normalization mean (default: the model's own)")
    std: list[float] | None = Field(None, min_length=1, description="normalization std (default: the model's own)")
    augment: bool = Field(True, description="augment training images (random resized crop, flip)")

    @model_validator(mode="after")
    def _source_fields(self) -> "DataSpec":
        if self.source == "hub" and not self.name:
            raise ValueError("source 'hub' needs 'name' (a Hub data set id)")
        if self.source == "imagefolder" and not self.path:
            raise ValueError("source 'imagefolder' needs 'path'")
        return self


class OutputSpec(_Section):
    strip: bool = True
    save: bool = True
    onnx: bool = True
    report: bool = True
    push_to_hub: str | None = Field(None, description="a Hub repo id to push the stripped model to")


class Recipe(_Section):
    """A validated recipe: the typed objects a run uses as they are (built by :func:`load_recipe`, or
    directly from the objects)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingArguments = Field(default_factory=lambda: TrainingArguments(output_dir=DEFAULT_OUTPUT_DIR))
    dense_epochs: int = Field(0, ge=0, description="epochs of dense training before pruning starts")
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    outputs: OutputSpec = Field(default_factory=OutputSpec)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as the plain mapping a recipe file holds; :func:`load_recipe` reads it back to an equal
        recipe. ``training`` lists the fields that differ from ``TrainingArguments``' defaults (hub tokens are
        never written)."""
        args = self.training
        pinned = {k: getattr(args, k) for k in ("output_dir", "logging_dir") if hasattr(args, k)}  # logging_dir: 4.x
        defaults = TrainingArguments(**pinned).to_dict()
        training = {k: v for k, v in args.to_dict().items()
                    if k not in _SECRETS and (k in pinned or v != defaults[k])}
        return {"model": self.model.model_dump(exclude_defaults=True),
                "data": self.data.model_dump(exclude_defaults=True), "training": training,
                "dense_epochs": self.dense_epochs, "pruning": self.pruning.to_dict(),
                "outputs": self.outputs.model_dump(exclude_defaults=True)}


@functools.cache
def _fields_model(cls: type) -> type[BaseModel]:
    """A pydantic model of the dataclass ``cls``'s init fields and their annotated types: unknown keys and values
    of the wrong type are errors (``HfArgumentParser.parse_dict`` checks neither: a YAML ``1e-4``, which is a
    string, would reach the optimizer)."""
    hints = get_type_hints(cls)
    return create_model(cls.__name__, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **{f.name: (hints[f.name], None) for f in dataclasses.fields(cls) if f.init})


def _training_arguments(section: Any) -> tuple[TrainingArguments | None, list[str]]:
    """``(TrainingArguments, [])`` from the ``training`` section, or ``(None, problems)``."""
    if not isinstance(section, Mapping):
        return None, [f"training: expected a mapping of TrainingArguments fields; got {section!r}"]
    try:
        checked = _fields_model(TrainingArguments).model_validate({"output_dir": DEFAULT_OUTPUT_DIR, **section})
    except ValidationError as e:
        return None, _describe(e, _fields_model(TrainingArguments), ("training",))
    try:
        (args,) = HfArgumentParser(TrainingArguments).parse_dict({k: getattr(checked, k) for k in checked.model_fields_set})
    except (ValueError, TypeError) as e:  # TrainingArguments' own checks (strategies, precision, ...)
        return None, [f"training: {e}"]
    return args, []


def _pruning_config(section: Any) -> tuple[PruningConfig | None, list[str]]:
    """``(PruningConfig, [])`` from the ``pruning`` section, or ``(None, problems)``."""
    if not isinstance(section, Mapping):
        return None, [f"pruning: expected a mapping (NNCF's filter_pruning section); got {section!r}"]
    try:
        return PruningConfig.from_dict(section), []
    except PruningConfigError as e:
        return None, [f"pruning.{p}".rstrip(".") + f": {msg}" for p, msg in e.errors]


def _describe(e: ValidationError, root: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[str]:
    """One ``key.path: problem`` line per error of ``root``; an unknown key gets the closest known one."""
    out = []
    for err in e.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model: Any = root
            for p in loc[:-1]:
                model = model.model_fields[p].annotation
            allowed = list(model.model_fields)
            hint = did_you_mean(loc[-1], allowed)
            msg = (f"unknown key{hint} (allowed: {', '.join(allowed)})" if issubclass(model, _Section)
                   else f"not a {model.__name__} field{hint}")
        else:
            msg += f"; got {err['input']!r}"
        out.append(f"{'.'.join(prefix + loc)}: {msg}")
    return out


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected key.path=value")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {assignment!r}: '{p}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (``key.path=value``) and validate a recipe; every problem is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with sections model, data, training, pruning, outputs")
    for assignment in overrides:
        set_override(data, assignment)
    training, errors = _training_arguments(data.get("training") or {})
    pruning, problems = _pruning_config(data.get("pruning") or {})
    errors += problems
    sections = {k: v for k, v in data.items() if k not in ("training", "pruning")}
    sections.update({k: v for k, v in (("training", training), ("pruning", pruning)) if v is not None})
    recipe = None
    try:
        recipe = Recipe(**sections)
    except ValidationError as e:
        errors += _describe(e, Recipe)
    source = data.get("data") or {}
    if isinstance(source, dict) and source.get("source") == "imagefolder" and source.get("path"):
        if not Path(str(source["path"])).expanduser().is_dir():
            errors.append(f"data.path: image folder {source['path']!r} does not exist")
    if errors or recipe is None:
        raise RecipeError(f"invalid recipe {path}:\n" + "\n".join(f"  {e}" for e in errors))
    return recipe
