"""Recipes: one YAML file describing a whole pruning run (model, data, training, pruning, outputs).

```yaml
model:    {name: timm/resnet18, pretrained: false, num_classes: 10, image_size: 32}
data:     {source: digits}                 # or {source: hub, name: cifar10, ...} / {source: imagefolder, path: ...}
training: {output_dir: outputs/demo, num_train_epochs: 6, ...}   # any transformers TrainingArguments field
dense_epochs: 2                            # optional dense warm-up before pruning starts
pruning:  {algorithm: filter_pruning, params: {...}}              # NNCF's filter_pruning section
outputs:  {save: true, onnx: true, report: true, push_to_hub: null}
```

Every section is validated before anything runs; errors name the key path (``data.path``,
``training.num_train_epocs``) and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..config import PruningConfig, PruningConfigError
from ..errors import HfPruneError
from ..text import did_you_mean


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
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    training: dict[str, Any] = Field(default_factory=dict)
    dense_epochs: int = Field(0, ge=0, description="epochs of dense training before pruning starts")
    pruning: dict[str, Any] = Field(default_factory=dict)
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    _pruning_config: PruningConfig | None = PrivateAttr(None)
    _training_arguments: Any = PrivateAttr(None)

    def pruning_config(self) -> PruningConfig:
        """The ``pruning`` section as the :class:`PruningConfig` validated with the recipe (built once)."""
        if self._pruning_config is None:
            self._pruning_config = PruningConfig.from_dict(self.pruning)
        return self._pruning_config

    def training_arguments(self):
        """The ``transformers.TrainingArguments`` of the ``training`` section, validated with the recipe
        (built once)."""
        if self._training_arguments is None:
            from transformers import TrainingArguments

            self._training_arguments = TrainingArguments(**self.training)
        return self._training_arguments


def _training_arguments(training: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """``(TrainingArguments, [])`` from the ``training`` section, or ``(None, problems)``."""
    from transformers import TrainingArguments

    names = [f.name for f in fields(TrainingArguments) if f.init]
    errors = [f"training.{key}: not a TrainingArguments field{did_you_mean(key, names)}"
              for key in training if key not in names]
    if errors:
        return None, errors
    try:
        return TrainingArguments(**training), []
    except (ValueError, TypeError) as e:
        return None, [f"training: {e}"]


def _describe(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model: Any = Recipe
            for p in parent:
                model = model.model_fields[str(p)].annotation
            allowed = list(model.model_fields)
            msg = f"unknown key{did_you_mean(str(err['loc'][-1]), allowed)} (allowed: {', '.join(allowed)})"
        out.append(f"{path}: {msg}" + (f"; got {err['input']!r}" if err["type"] != "extra_forbidden" else ""))
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
    errors: list[str] = []
    recipe = None
    try:
        recipe = Recipe(**data)
    except ValidationError as e:
        errors += _describe(e)
    training_arguments = pruning_config = None
    training = data.get("training") or {}
    if isinstance(training, dict):
        training_arguments, problems = _training_arguments(training)
        errors += problems
    pruning = data.get("pruning") or {}
    if isinstance(pruning, dict):
        try:
            pruning_config = PruningConfig.from_dict(pruning)
        except PruningConfigError as e:
            errors += [f"pruning.{p}".rstrip(".") + f": {msg}" for p, msg in e.errors]
    source = data.get("data") or {}
    if isinstance(source, dict) and source.get("source") == "imagefolder" and source.get("path"):
        if not Path(str(source["path"])).expanduser().is_dir():
            errors.append(f"data.path: image folder {source['path']!r} does not exist")
    if errors or recipe is None:
        raise RecipeError(f"invalid recipe {path}:\n" + "\n".join(f"  {e}" for e in errors))
    recipe._training_arguments, recipe._pruning_config = training_arguments, pruning_config  # kept, not rebuilt
    return recipe
