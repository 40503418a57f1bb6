"""Configuration of the ``filter_pruning`` algorithm, with NNCF 2.19 key names and defaults.

A :class:`PruningConfig` is the algorithm dict of an NNCF ``compression`` section::

    {"algorithm": "filter_pruning", "pruning_init": 0.1,
     "params": {"schedule": "exponential", "pruning_target": 0.4, "pruning_steps": 15}}

It reads that dict bare, inside a full NNCF config, or from a JSON/YAML file, and
reports every invalid value at once as a :class:`PruningConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from .errors import HfPruneError, MissingFileError
from .files import write_text_atomic
from .text import did_you_mean

__all__ = ["PruningArguments", "PruningConfig", "PruningParams", "LegrParams", "PruningConfigError"]

ALGORITHM_NAME = "filter_pruning"
DEFAULT_PRUNING_TARGET = 0.5
"""Filter pruning rate NNCF uses when neither target is set."""
CONFIG_NAME = "pruning_config.json"
"""File name used by :meth:`PruningConfig.save_pretrained` / :meth:`PruningConfig.from_pretrained`."""
FORMAT_VERSION = 1
"""Version of the ``pruning_config.json`` layout :meth:`PruningConfig.save_pretrained` writes."""


class PruningConfigError(HfPruneError, ValueError):
    """An invalid pruning configuration.

    ``errors`` holds one ``(dotted key path, problem)`` pair per problem; the message
    lists them one per line as ``<path>: <problem>``.
    """

    def __init__(self, errors: list[tuple[str, str]], source: str | os.PathLike[str] | None = None) -> None:
        self.errors = errors
        self.source = source
        where = f" in {os.fspath(source)}" if source is not None else ""
        lines = (f"  {path}: {problem}" if path else f"  {problem}" for path, problem in errors)
        super().__init__(f"invalid pruning config{where}:\n" + "\n".join(lines))

    def with_prefix(self, prefix: str, source: str | os.PathLike[str] | None = None) -> PruningConfigError:
        """The same errors with ``prefix`` prepended to every key path."""
        return PruningConfigError([(_join(prefix, path), problem) for path, problem in self.errors], source)


def _whole_number(value: Any) -> Any:
    """A float with no fraction (``15.0``) as an int: NNCF's schema takes whole numbers written as floats."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeInt = Annotated[int, BeforeValidator(_whole_number)]
"""An int field that also accepts a whole number written as a float, as NNCF's JSON schema does."""


class _Section(BaseModel):
    """Base of all config sections: unknown keys and loose types are errors.

    Only :class:`PruningConfig` turns pydantic's ``ValidationError`` into
    :class:`PruningConfigError`; a section built on its own raises ``ValidationError``.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class LegrParams(_Section):
    """Parameters of the LeGR ``learned_ranking`` search (NNCF ``params.legr_params``)."""

    generations: WholeInt = Field(400, ge=1, description="Generations of the evolution algorithm.")
    train_steps: WholeInt = Field(200, ge=1, description="Fine-tuning steps (the train function's budget) per candidate.")
    max_pruning: float | None = Field(
        None, gt=0, lt=1, description="The most any one group is pruned under learned ranking (unset: the pruning target, as in NNCF)."
    )
    random_seed: WholeInt = Field(42, description="Seed of the evolution algorithm.")
    population_size: WholeInt = Field(64, ge=1, description="Candidates kept per generation.")
    num_samples: WholeInt = Field(16, ge=1, description="Candidates sampled per generation.")
    mutate_percent: float = Field(0.1, gt=0, le=1, description="Fraction of coefficients mutated.")
    scale_sigma: float = Field(1.0, gt=0, description="Standard deviation of the scale mutation.")


class PruningParams(_Section):
    """NNCF ``filter_pruning`` ``params``, plus hf_prune extensions.

    The hf_prune extensions, unknown to NNCF, are ``channel_multiple``, ``regularization_weight``
    and the hardware-aware keys (``pruning_latency_target``, ``deploy_device``, ``deploy_dtype``,
    ``latency_batch_size``, ``latency_table_path``).
    """

    schedule: Literal["exponential", "exponential_with_bias", "baseline"] = Field(
        "exponential", description="How the pruning rate grows from pruning_init to the target."
    )
    pruning_target: float | None = Field(
        None, ge=0, lt=1, description="Target fraction of filters to prune (0.5 when no target is set)."
    )
    pruning_flops_target: float | None = Field(
        None, ge=0, lt=1, description="Target fraction of FLOPs to remove; excludes pruning_target."
    )
    num_init_steps: WholeInt = Field(0, ge=0, description="Epochs before pruning starts.")
    pruning_steps: WholeInt = Field(100, ge=1, description="Epochs over which the rate reaches the target (1: at once).")
    filter_importance: Literal["L2", "L1", "geometric_median"] = Field(
        "L2", description="Criterion ranking filters within a layer."
    )
    interlayer_ranking_type: Literal["unweighted_ranking", "learned_ranking"] = Field(
        "unweighted_ranking", description="How filters of different layers are compared."
    )
    all_weights: bool = Field(False, description="Rank filters across all groups (importance normalized per group) instead of one level per group; no group pruned beyond 90%. With pruning_latency_target, channels go where the latency table says they save most time per importance lost.")
    prune_first_conv: bool = Field(False, description="Also prune the first convolution.")
    prune_downsample_convs: bool = Field(False, description="Also prune convolutions that downsample.")
    prune_batch_norms: bool = Field(True, description="Zero the norm parameters of pruned channels in the zeros export format (a strip always removes them).")
    legr_params: LegrParams = Field(default_factory=LegrParams, description="LeGR search parameters.")
    save_ranking_coeffs_path: str | None = Field(None, description="Where to save learned ranking coefficients.")
    load_ranking_coeffs_path: str | None = Field(None, description="Where to load ranking coefficients from.")
    channel_multiple: int | Literal["auto"] = Field(
        8,
        description="hf_prune extension: round kept channels to this multiple (an integer >= 1) where the layer "
        "is large enough; 'auto' picks it for deploy_device/deploy_dtype (64 for bf16/fp16 on CUDA, 32 for fp32 "
        "on CUDA, 16 on AVX-512 CPUs and 8 on other CPUs, for ONNX Runtime) and rounds groups smaller than "
        "that multiple to a power-of-two fraction of it (at least 8).",
    )
    regularization_weight: float = Field(
        0.0, ge=0, description="hf_prune extension: weight of the optional group-sparsity loss (0 disables it)."
    )
    # --- hf_prune extension: hardware-aware pruning (latency target, deployment device) ---
    pruning_latency_target: float | None = Field(
        None, gt=0, lt=1, description="hf_prune extension: target latency as a fraction of the dense model's, "
        "predicted by a per-layer latency table measured on deploy_device; excludes the other targets.")
    deploy_device: str | None = Field(
        None, description="hf_prune extension: device the pruned model will run on ('cpu', 'cuda', 'cuda:1'); "
        "default: the device of the model's parameters. Used by channel_multiple 'auto' and the latency table.")
    deploy_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="hf_prune extension: dtype the pruned model will run in; default: the dtype of the "
        "model's parameters (set it when training in fp32 with bf16/fp16 autocast).")
    latency_batch_size: int = Field(1, ge=1, description="hf_prune extension: batch size of the latency table.")
    latency_table_path: str | None = Field(
        None, description="hf_prune extension: JSON file caching the latency table (measured again when the model, "
        "device, dtype, batch size or torch version differ); default: ~/.cache/hf_prune/latency/<key>.json.")

    @field_validator("channel_multiple", mode="before")
    @classmethod
    def _multiple_or_auto(cls, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PydanticCustomError("multiple", "expected an integer >= 1 or 'auto'", {"got": repr(value)})
        return value

    @model_validator(mode="after")
    def _latency_target_alone(self) -> PruningParams:
        if self.pruning_latency_target is not None and (self.pruning_target or self.pruning_flops_target):
            other = "pruning_target" if self.pruning_target else "pruning_flops_target"  # 0 is unset, as in NNCF
            raise PydanticCustomError(
                "conflicting_targets", "set only one of 'pruning_target', 'pruning_flops_target', 'pruning_latency_target'",
                {"got": f"{other} and pruning_latency_target {self.pruning_latency_target!r}"})
        return self

    @field_validator("pruning_target", mode="before")
    @classmethod
    def _not_everything(cls, value: Any) -> Any:
        if value == 1 and not isinstance(value, bool):
            raise PydanticCustomError(
                "full_target",
                "1.0 would prune every filter (NNCF accepts it and then silently caps every layer at 90%): "
                "set the level you mean, e.g. 0.9",
                {"got": repr(value)},
            )
        return value

    @field_validator("pruning_steps", mode="before")
    @classmethod
    def _some_steps(cls, value: Any) -> Any:
        if value == 0 and not isinstance(value, bool):
            raise PydanticCustomError(
                "no_pruning_steps",
                "0 never reaches the target (NNCF accepts it and freezes the masks at pruning_init): "
                "use 1 to reach the target at once, or schedule 'baseline'",
                {"got": repr(value)},
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _nncf_conventions(cls, data: Any) -> Any:
        """What NNCF does before it reads params: pruning_flops_target 0 means unset; learned_ranking
        defaults prune_first_conv, prune_downsample_convs and all_weights to true and refuses all_weights false."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if data.get("pruning_flops_target") == 0 and not isinstance(data["pruning_flops_target"], bool):
            data["pruning_flops_target"] = None
        if data.get("interlayer_ranking_type") == "learned_ranking":
            if data.get("all_weights") is False:
                raise PydanticCustomError(
                    "legr_all_weights",
                    "learned_ranking ranks filters across all layers and needs all_weights true (as NNCF does)",
                    {"key": "all_weights", "got": "False"},
                )
            for key in ("prune_first_conv", "prune_downsample_convs", "all_weights"):
                data.setdefault(key, True)
        return data

    @model_validator(mode="after")
    def _single_target(self) -> PruningParams:
        if self.pruning_target and self.pruning_flops_target:  # NNCF: a zero pruning_target does not conflict
            raise PydanticCustomError(
                "conflicting_targets",
                "set either 'pruning_target' or 'pruning_flops_target', not both",
                {"got": f"{self.pruning_target!r} and {self.pruning_flops_target!r}"},
            )
        if self.interlayer_ranking_type == "learned_ranking" and self.legr_params.max_pruning is None:
            self.legr_params.max_pruning = self.target  # NNCF's LeGR default
        return self

    @property
    def target(self) -> float:
        """The effective target level: FLOPs target if set, else the latency reduction (1 -
        pruning_latency_target) if set, else filter target, else 0.5."""
        if self.pruning_flops_target is not None:
            return self.pruning_flops_target
        if self.pruning_latency_target is not None:
            return 1.0 - self.pruning_latency_target
        if self.pruning_target is not None:
            return self.pruning_target
        return DEFAULT_PRUNING_TARGET


class BatchnormAdaptationConfig(_Section):
    """NNCF ``initializer.batchnorm_adaptation``."""

    num_bn_adaptation_samples: WholeInt = Field(2000, ge=0, description="Samples used to re-estimate BN statistics.")


class InitializerConfig(_Section):
    """NNCF ``initializer`` of the pruning algorithm."""

    batchnorm_adaptation: BatchnormAdaptationConfig = Field(default_factory=BatchnormAdaptationConfig)


class PruningConfig(_Section):
    """The NNCF ``filter_pruning`` algorithm config.

    Any :class:`PruningParams` key may also be given at top level
    (``PruningConfig(pruning_target=0.4)``); it is moved into ``params``.
    Invalid values raise :class:`PruningConfigError`.
    """

    algorithm: Literal["filter_pruning"] = ALGORITHM_NAME
    pruning_init: float = Field(0.0, ge=0, lt=1, description="Pruning rate applied at the start.")
    initializer: InitializerConfig = Field(default_factory=InitializerConfig)
    params: PruningParams = Field(default_factory=PruningParams)
    ignored_scopes: list[str] = Field(default_factory=list, description="Layers never pruned: a module name (covers its children), an NNCF scope ('ResNet/Sequential[layer1]/Conv2d[conv1]') or '{re}<regex>' over NNCF scopes.")
    target_scopes: list[str] = Field(default_factory=list, description="If set, only groups whose producers all match are pruned (same syntax).")
    validate_scopes: bool = Field(True, description="A scope that matches no layer is an error (else it is ignored), as in NNCF.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            errors = [_describe(error) for error in exc.errors(include_url=False)]
            raise PruningConfigError(list(dict.fromkeys(errors))) from None

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_params(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        flat = {key: data.pop(key) for key in PruningParams.model_fields if key in data}
        if not flat:
            return data
        params = data.get("params", {})
        if isinstance(params, PruningParams):
            params = params.model_dump(exclude_unset=True)
        if not isinstance(params, Mapping):
            return data
        if duplicates := sorted(flat.keys() & params.keys()):
            key = duplicates[0]
            raise PydanticCustomError(
                "duplicate_key",
                "given both at top level and inside 'params'",
                {"key": key, "got": f"{flat[key]!r} and {params[key]!r}"},
            )
        data["params"] = {**params, **flat}
        return data

    @field_validator("ignored_scopes", "target_scopes", mode="before")
    @classmethod
    def _scope_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def prune_flops(self) -> bool:
        """Whether the target is a FLOPs reduction rather than a filter rate."""
        return self.params.pruning_flops_target is not None

    @property
    def prune_latency(self) -> bool:
        """Whether the target is a latency (``pruning_latency_target``); the level is then a latency reduction."""
        return self.params.pruning_latency_target is not None

    @property
    def target(self) -> float:
        """The effective target level (see :attr:`PruningParams.target`)."""
        return self.params.target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningConfig:
        """Build from a bare algorithm dict or a full NNCF config with a ``compression`` section.

        In the full form, the ``filter_pruning`` entry of ``compression`` (one dict or a
        list of them) is used and every other top-level key is ignored.
        """
        if not isinstance(data, Mapping):
            raise PruningConfigError([("", f"expected a mapping; got {data!r}")])
        prefix = ""
        if "compression" in data:
            prefix, data = _select_algorithm(data["compression"])
        try:
            return cls(**{str(key): value for key, value in data.items()})
        except PruningConfigError as exc:
            raise exc.with_prefix(prefix) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PruningConfig:
        """Read a ``.json``, ``.yaml`` or ``.yml`` file (through :meth:`from_dict`).

        A file whose top level has a ``pruning`` section (a recipe) uses that section. A ``format_version``
        (written by :meth:`save_pretrained`) this hf_prune does not know is refused, naming the file.
        """
        path = Path(path)
        file_format = _file_format(path)
        if not path.is_file():
            raise MissingFileError(f"pruning config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if file_format == "json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise PruningConfigError([("", f"cannot parse file: {exc}")], source=path) from exc
        if isinstance(data, Mapping) and "format_version" in data:  # written by save_pretrained
            data = dict(data)
            version = data.pop("format_version")
            if version != FORMAT_VERSION:
                raise PruningConfigError([("format_version", f"{version!r} is not supported (this hf_prune reads "
                                           f"version {FORMAT_VERSION}); the file was written by a newer hf_prune: "
                                           "upgrade hf_prune")], source=path)
        prefix = ""
        if isinstance(data, Mapping) and "pruning" in data:
            prefix, data = "pruning", {} if data["pruning"] is None else data["pruning"]
        try:
            return cls.from_dict(data)
        except PruningConfigError as exc:
            raise exc.with_prefix(prefix, source=path) from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, revision: str | None = None,
                        subfolder: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                        token: str | bool | None = None) -> PruningConfig:
        """Read ``pruning_config.json`` from a :meth:`save_pretrained` directory, a config file, or a Hub
        repository (``"user/repo"``, at ``revision``, under ``subfolder``, cached in ``cache_dir``).

        A file written by a newer hf_prune (unknown ``format_version``) is refused, naming the file.
        """
        local = Path(path).expanduser()
        if subfolder:
            local = local / subfolder
        if local.is_file():
            return cls.from_file(local)
        if local.is_dir():
            return cls.from_file(local / CONFIG_NAME)
        return cls.from_file(_hub_file(os.fspath(path), subfolder, revision, cache_dir, token))

    def to_dict(self) -> dict[str, Any]:
        """The NNCF algorithm dict; unset optional params are omitted."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_nncf_dict(self) -> dict[str, Any]:
        """An NNCF config fragment: ``{"compression": <to_dict()>}``."""
        return {"compression": self.to_dict()}

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the algorithm dict as JSON or YAML (by extension), atomically."""
        path = Path(path)
        if _file_format(path) == "json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_text_atomic(path, text)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``pruning_config.json`` (the algorithm dict and a ``format_version``) into ``directory``
        (created if missing), atomically; returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        write_text_atomic(path, self._to_json())
        return path

    def _to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2) + "\n"

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload pruning config", private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, subfolder: str | None = None,
                    create_pr: bool = False) -> str:
        """Upload ``pruning_config.json`` to the Hub model repository ``repo_id`` (created if missing), as
        :meth:`save_pretrained` writes it; returns the commit URL. :meth:`from_pretrained` reads it back."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        path_in_repo = f"{subfolder.strip('/')}/{CONFIG_NAME}" if subfolder else CONFIG_NAME
        commit = api.upload_file(path_or_fileobj=self._to_json().encode("utf-8"), path_in_repo=path_in_repo,
                                 repo_id=repo_id, commit_message=commit_message, revision=revision,
                                 create_pr=create_pr)
        return str(getattr(commit, "commit_url", commit))


def _hub_file(repo_id: str, subfolder: str | None, revision: str | None, cache_dir: str | os.PathLike[str] | None,
              token: str | bool | None) -> Path:
    """``pruning_config.json`` of the Hub repository ``repo_id``, downloaded (or from the cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, CONFIG_NAME, subfolder=subfolder, revision=revision,
                                    cache_dir=cache_dir, token=token))
    except HFValidationError:
        raise MissingFileError(f"{repo_id}: neither a local directory or file nor a Hub repository id") from None
    except LocalEntryNotFoundError as exc:  # offline, and not in the cache
        reason = str(exc).strip().splitlines()[0]
        raise MissingFileError(f"{where}: cannot download {CONFIG_NAME} from the Hub ({reason})") from None
    except RepositoryNotFoundError:
        raise MissingFileError(f"{where}: no such Hub repository (or it is private: pass token=...)") from None
    except RevisionNotFoundError:
        raise MissingFileError(f"{where}: the Hub repository has no such revision") from None
    except EntryNotFoundError:
        missing = f"{subfolder.strip('/')}/{CONFIG_NAME}" if subfolder else CONFIG_NAME
        raise MissingFileError(f"{where}: the Hub repository has no {missing}") from None


def _argument_type(annotation: Any) -> tuple[Any, bool]:
    """(the type ``HfArgumentParser`` reads a config field as, whether a whole number given as text must be
    converted back); None for nested sections, which are set through a config file."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    options = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) \
        else [annotation]
    if len(options) > 1:  # int | Literal["auto"]: read as text
        return str, True
    (kind,) = options
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return None, False
    return kind, False


def _argument_fields() -> list[tuple[str, Any, Any]]:
    fields = []
    sources = [(name, f) for name, f in PruningConfig.model_fields.items() if name not in ("algorithm", "params")]
    sources += list(PruningParams.model_fields.items())
    for name, info in sources:
        kind, _ = _argument_type(info.annotation)
        if kind is not None:
            fields.append((name, kind | None, dataclasses.field(default=None, metadata={"help": info.description})))
    return fields


def _to_config(self: Any) -> PruningConfig:
    """The :class:`PruningConfig` of these arguments: ``pruning_config`` (a file or a :meth:`PruningConfig.
    from_pretrained` source) if given, with every argument given on the command line on top."""
    given = {}
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        if value is None or f.name == "pruning_config":
            continue
        info = PruningConfig.model_fields.get(f.name) or PruningParams.model_fields[f.name]
        if _argument_type(info.annotation)[1] and isinstance(value, str) and value.isdigit():
            value = int(value)
        given[f.name] = value
    if self.pruning_config is None:
        return PruningConfig.from_dict(given)
    base = PruningConfig.from_pretrained(self.pruning_config).to_dict()
    params = {k: given.pop(k) for k in list(given) if k in PruningParams.model_fields}
    return PruningConfig.from_dict({**base, **given, "params": {**base.get("params", {}), **params}})


PruningArguments = dataclasses.make_dataclass(
    "PruningArguments",
    [("pruning_config", str | None, dataclasses.field(default=None, metadata={
        "help": "A pruning config (JSON/YAML file, save_pretrained directory or Hub id); the other arguments "
                "override it."}))] + _argument_fields(),
    namespace={"to_config": _to_config, "__module__": __name__,
               "__doc__": "The scalar :class:`PruningConfig` fields as a dataclass, for ``transformers.HfArgumentParser``"
                          " (``--pruning_target 0.4``); unset (None) fields keep the config's value. Nested sections "
                          "(``legr_params``, ``initializer``) come from ``--pruning_config FILE``. ``to_config()`` builds "
                          "the :class:`PruningConfig`."},
)


def _select_algorithm(compression: Any) -> tuple[str, Any]:
    """The key path and dict of the single ``filter_pruning`` entry of an NNCF ``compression`` section."""
    if isinstance(compression, Mapping):
        candidates = [("compression", compression)]
    elif isinstance(compression, list):
        candidates = [(f"compression[{i}]", entry) for i, entry in enumerate(compression)]
    else:
        problem = f"expected an algorithm mapping or a list of them; got {compression!r}"
        raise PruningConfigError([("compression", problem)])
    found = [entry.get("algorithm") if isinstance(entry, Mapping) else entry for _, entry in candidates]
    matches = [(prefix, entry) for (prefix, entry), name in zip(candidates, found) if name == ALGORITHM_NAME]
    if len(matches) != 1:
        count = "no" if not matches else "more than one"
        problem = f"{count} '{ALGORITHM_NAME}' algorithm; got algorithms {found!r}"
        raise PruningConfigError([("compression", problem)])
    return matches[0]


def _file_format(path: Path) -> Literal["json", "yaml"]:
    """``"json"`` or ``"yaml"``, from ``path``'s extension."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    problem = f"unsupported file extension (use .json, .yaml or .yml); got {suffix!r}"
    raise PruningConfigError([("", problem)], source=path)


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(key path, problem)`` pair of one pydantic error."""
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if "key" in ctx:
        loc += (ctx["key"],)
    got = ctx.get("got", repr(error["input"]))
    if error["type"] == "extra_forbidden":
        problem = _unknown_key(loc)
    elif "got" in ctx:
        problem = error["msg"]
    elif (field := _field_at(loc)) is not None:
        problem = f"expected {_expected(field.annotation, field.metadata)}"
    else:
        problem = error["msg"][:1].lower() + error["msg"][1:]
    return _dotted(loc), f"{problem}; got {got}"


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """Problem text for an unknown key, with a "did you mean" suggestion."""
    field = _field_at(loc[:-1]) if len(loc) > 1 else None
    model = field.annotation if field is not None else PruningConfig
    allowed = sorted(model.model_fields)
    candidates = list(allowed)
    suffix = ""
    if model is PruningConfig:
        candidates += list(PruningParams.model_fields)
        suffix = ", or any key of 'params'"
    return f"unknown key{did_you_mean(str(loc[-1]), candidates)} (allowed: {', '.join(allowed)}{suffix})"


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    """The :class:`PruningConfig` field an error location points at; None if it points inside a field."""
    model: Any = PruningConfig
    field = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = field.annotation
    return field


def _expected(annotation: Any, metadata: list[Any]) -> str:
    """What a field accepts, in words, e.g. ``"an integer >= 1"``."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if type(None) in args:
        (inner,) = (arg for arg in args if arg is not type(None))
        return f"{_expected(inner, metadata)} or null"
    if annotation is bool:
        return "a boolean (true or false)"
    if annotation in (int, float):
        return ("an integer" if annotation is int else "a number") + _bounds(metadata)
    if annotation is str:
        return "a string"
    if get_origin(annotation) is list:
        return "a string or a list of strings"
    return "a mapping"


def _bounds(metadata: list[Any]) -> str:
    """Numeric bounds in words: ``" >= 1"``, ``" > 0"`` or ``" in [0, 1)"``."""
    lower = upper = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower = ("[", ">=", item.ge)
        elif isinstance(item, annotated_types.Gt):
            lower = ("(", ">", item.gt)
        elif isinstance(item, annotated_types.Le):
            upper = ("]", "<=", item.le)
        elif isinstance(item, annotated_types.Lt):
            upper = (")", "<", item.lt)
    if lower and upper:
        return f" in {lower[0]}{lower[2]}, {upper[2]}{upper[0]}"
    if lower or upper:
        _, op, bound = lower or upper
        return f" {op} {bound}"
    return ""


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("params", "legr_params", "seed")`` -> ``"params.legr_params.seed"``; ints become ``[i]``."""
    path = ""
    for part in loc:
        path = _join(path, f"[{part}]" if isinstance(part, int) else str(part))
    return path


def _join(prefix: str, path: str) -> str:
    """Join two key paths with a dot, leaving out empty parts and the dot before ``[i]``."""
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"
