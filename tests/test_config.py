"""Tests for hf_prune.config: NNCF filter_pruning defaults, IO forms and error messages."""

import json
from pathlib import Path

import pytest
import yaml

from hf_prune.config import LegrParams, PruningConfig, PruningConfigError, PruningParams
from hf_prune.errors import HfPruneError

NNCF_PARAMS = {
    "schedule": "exponential",
    "pruning_target": 0.4,
    "pruning_steps": 15,
    "filter_importance": "geometric_median",
    "prune_first_conv": True,
}
NNCF_ALGO = {
    "algorithm": "filter_pruning",
    "pruning_init": 0.1,
    "params": NNCF_PARAMS,
    "ignored_scopes": ["ResNet/Conv2d[conv1]"],
}


def _error(**kwargs) -> PruningConfigError:
    with pytest.raises(PruningConfigError) as info:
        PruningConfig(**kwargs)
    return info.value


def _assert_reported(exc: PruningConfigError, path: str, *fragments: str) -> None:
    """Exactly one problem, at ``path``, whose text (and the message) contains every fragment."""
    assert [p for p, _ in exc.errors] == [path]
    problem = exc.errors[0][1]
    for fragment in fragments:
        assert fragment in problem
    assert f"{path}: {problem}" in str(exc).splitlines()[1]


# --- defaults --------------------------------------------------------------------------------


def test_defaults_match_nncf():
    cfg = PruningConfig()
    assert cfg.algorithm == "filter_pruning"
    assert cfg.pruning_init == 0.0
    assert cfg.ignored_scopes == [] and cfg.target_scopes == []
    assert cfg.initializer.batchnorm_adaptation.num_bn_adaptation_samples == 2000
    p = cfg.params
    assert p.schedule == "exponential"
    assert p.pruning_target is None and p.pruning_flops_target is None
    assert p.pruning_steps == 100
    assert p.num_init_steps == 0
    assert p.filter_importance == "L2"
    assert p.interlayer_ranking_type == "unweighted_ranking"
    assert p.all_weights is False
    assert p.prune_first_conv is False
    assert p.prune_downsample_convs is False
    assert p.prune_batch_norms is True
    assert p.save_ranking_coeffs_path is None and p.load_ranking_coeffs_path is None
    assert p.legr_params == LegrParams(
        generations=400,
        train_steps=200,
        max_pruning=None,  # the target under learned_ranking (NNCF)
        random_seed=42,
        population_size=64,
        num_samples=16,
        mutate_percent=0.1,
        scale_sigma=1.0,
    )
    assert p.channel_multiple == 8
    assert p.regularization_weight == 0.0


def test_effective_target_defaults_to_half():
    cfg = PruningConfig()
    assert cfg.target == 0.5
    assert cfg.prune_flops is False


def test_target_properties():
    assert PruningConfig(pruning_target=0.3).target == 0.3
    flops = PruningConfig(pruning_flops_target=0.6)
    assert flops.prune_flops is True
    assert flops.target == 0.6


def test_default_to_dict_omits_unset_optionals():
    params = PruningConfig().to_dict()["params"]
    for key in ("pruning_target", "pruning_flops_target", "save_ranking_coeffs_path", "load_ranking_coeffs_path"):
        assert key not in params


# --- construction forms ----------------------------------------------------------------------


def test_nested_and_flat_kwargs_are_equivalent():
    nested = PruningConfig(params={"pruning_target": 0.4, "schedule": "baseline"})
    flat = PruningConfig(pruning_target=0.4, schedule="baseline")
    assert flat == nested
    assert flat.params.schedule == "baseline"
    assert flat.params.pruning_target == 0.4


def test_flat_kwargs_merge_with_nested_params():
    cfg = PruningConfig(pruning_steps=20, params={"pruning_target": 0.3}, pruning_init=0.1)
    assert cfg.params.pruning_steps == 20
    assert cfg.params.pruning_target == 0.3
    assert cfg.pruning_init == 0.1


def test_flat_kwargs_merge_with_params_instance():
    cfg = PruningConfig(params=PruningParams(pruning_target=0.3), pruning_steps=20)
    assert (cfg.params.pruning_target, cfg.params.pruning_steps) == (0.3, 20)


def test_flat_form_in_from_dict():
    cfg = PruningConfig.from_dict({"pruning_flops_target": 0.3, "all_weights": True})
    assert cfg.params.pruning_flops_target == 0.3
    assert cfg.params.all_weights is True


def test_single_string_scopes_become_lists():
    cfg = PruningConfig.from_dict({"ignored_scopes": "{re}.*head.*", "target_scopes": "Net/Conv2d[a]"})
    assert cfg.ignored_scopes == ["{re}.*head.*"]
    assert cfg.target_scopes == ["Net/Conv2d[a]"]


def test_algorithm_key_is_optional():
    bare = PruningConfig.from_dict({"params": NNCF_PARAMS})
    assert bare == PruningConfig.from_dict({"algorithm": "filter_pruning", "params": NNCF_PARAMS})


def test_int_accepted_for_float():
    assert PruningConfig(pruning_init=0, pruning_target=0).params.pruning_target == 0.0


# --- NNCF files ------------------------------------------------------------------------------


def _check_nncf_algo(cfg: PruningConfig) -> None:
    assert cfg.pruning_init == 0.1
    assert cfg.params.pruning_target == 0.4
    assert cfg.params.pruning_steps == 15
    assert cfg.params.filter_importance == "geometric_median"
    assert cfg.params.prune_first_conv is True
    assert cfg.ignored_scopes == ["ResNet/Conv2d[conv1]"]
    assert cfg.params.prune_batch_norms is True  # untouched default


def test_nncf_json_single_compression_dict(tmp_path: Path):
    path = tmp_path / "nncf_config.json"
    nncf = {
        "model": "resnet50",
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "target_device": "CPU",
        "compression": NNCF_ALGO,
    }
    path.write_text(json.dumps(nncf))
    cfg = PruningConfig.from_file(path)
    _check_nncf_algo(cfg)
    assert cfg.to_dict() == PruningConfig.from_dict(NNCF_ALGO).to_dict()


def test_nncf_json_compression_list(tmp_path: Path):
    path = tmp_path / "nncf_config.json"
    nncf = {
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": [{"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}, NNCF_ALGO],
    }
    path.write_text(json.dumps(nncf))
    _check_nncf_algo(PruningConfig.from_file(path))


def test_nncf_dict_read_unchanged():
    cfg = PruningConfig.from_dict(NNCF_ALGO)
    expected = json.loads(json.dumps(NNCF_ALGO))
    out = cfg.to_dict()
    for key, value in expected.items():
        if key != "params":
            assert out[key] == value
    for key, value in expected["params"].items():
        assert out["params"][key] == value


def test_yaml_recipe_pruning_section(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model: timm/resnet18.a1_in1k\n"
        "training:\n  epochs: 10\n"
        "pruning:\n"
        "  pruning_init: 0.1\n"
        "  ignored_scopes: ResNet/Conv2d[conv1]\n"
        "  params:\n"
        "    pruning_flops_target: 0.3\n"
        "    schedule: exponential_with_bias\n"
        "    channel_multiple: 16\n"
    )
    cfg = PruningConfig.from_file(path)
    assert cfg.pruning_init == 0.1
    assert cfg.ignored_scopes == ["ResNet/Conv2d[conv1]"]
    assert cfg.params.schedule == "exponential_with_bias"
    assert cfg.params.channel_multiple == 16
    assert cfg.prune_flops and cfg.target == 0.3


def test_yml_bare_algorithm(tmp_path: Path):
    path = tmp_path / "algo.yml"
    path.write_text(yaml.safe_dump(NNCF_ALGO))
    _check_nncf_algo(PruningConfig.from_file(path))


def test_empty_pruning_section_gives_defaults(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text("pruning:\n")
    assert PruningConfig.from_file(path) == PruningConfig()


# --- round trips -----------------------------------------------------------------------------


def _custom() -> PruningConfig:
    return PruningConfig(
        pruning_init=0.05,
        ignored_scopes=["{re}.*downsample.*"],
        initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}},
        params={
            "schedule": "baseline",
            "pruning_flops_target": 0.35,
            "interlayer_ranking_type": "learned_ranking",
            "legr_params": {"generations": 10, "random_seed": -1, "mutate_percent": 1.0},
            "save_ranking_coeffs_path": "coeffs.json",
            "regularization_weight": 1e-4,
        },
    )


def test_to_dict_from_dict_round_trip():
    cfg = _custom()
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg
    assert PruningConfig.from_dict(cfg.to_nncf_dict()) == cfg
    assert cfg.to_nncf_dict() == {"compression": cfg.to_dict()}
    assert "pruning_target" not in cfg.to_dict()["params"]


def test_to_dict_is_json_serializable():
    json.dumps(_custom().to_dict())


@pytest.mark.parametrize("name", ["cfg.json", "cfg.yaml", "cfg.yml"])
def test_to_file_from_file_round_trip(tmp_path: Path, name: str):
    cfg = _custom()
    path = tmp_path / name
    cfg.to_file(path)
    assert PruningConfig.from_file(path) == cfg
    assert PruningConfig.from_file(str(path)) == cfg
    loaded = json.loads(path.read_text()) if name.endswith(".json") else yaml.safe_load(path.read_text())
    assert loaded == cfg.to_dict()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_to_file_overwrites(tmp_path: Path):
    path = tmp_path / "cfg.json"
    PruningConfig().to_file(path)
    _custom().to_file(path)
    assert PruningConfig.from_file(path) == _custom()


def test_to_file_unknown_extension(tmp_path: Path):
    path = tmp_path / "cfg.toml"
    with pytest.raises(PruningConfigError, match=r"\.toml"):
        PruningConfig().to_file(path)
    assert not path.exists()


def test_save_pretrained_from_pretrained(tmp_path: Path):
    cfg = _custom()
    out = tmp_path / "run" / "checkpoint"
    cfg.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["pruning_config.json"]
    assert json.loads((out / "pruning_config.json").read_text()) == {"format_version": 1, **cfg.to_dict()}
    assert PruningConfig.from_pretrained(out) == cfg
    assert PruningConfig.from_pretrained(str(out)) == cfg
    assert PruningConfig.from_pretrained(out / "pruning_config.json") == cfg


def test_from_pretrained_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="pruning_config.json"):
        PruningConfig.from_pretrained(tmp_path)


# --- validation errors -----------------------------------------------------------------------


def test_unknown_param_key_suggests_close_match():
    exc = _error(params={"pruning_taget": 0.3})
    _assert_reported(
        exc,
        "params.pruning_taget",
        "unknown key; did you mean 'pruning_target'?",
        "(allowed: all_weights, channel_multiple, ",
        "got 0.3",
    )


def test_unknown_top_level_key_suggests_params_key():
    exc = _error(pruning_taget=0.3)
    _assert_reported(exc, "pruning_taget", "did you mean 'pruning_target'?", "got 0.3")


def test_unknown_key_without_close_match():
    exc = _error(params={"legr_params": {"zzz": 1}})
    _assert_reported(exc, "params.legr_params.zzz", "unknown key (allowed: generations, ", "got 1")
    assert "did you mean" not in str(exc)


def test_unknown_key_in_nncf_file_names_file_and_path(tmp_path: Path):
    path = tmp_path / "nncf.json"
    compression = [{"algorithm": "quantization"}, {"algorithm": "filter_pruning", "pruning_int": 0.1}]
    path.write_text(json.dumps({"compression": compression}))
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_file(path)
    _assert_reported(info.value, "compression[1].pruning_int", "did you mean 'pruning_init'?", "got 0.1")
    assert str(path) in str(info.value)


def test_pruning_target_out_of_range():
    exc = _error(params={"pruning_target": -0.1})
    _assert_reported(exc, "params.pruning_target", "expected a number in [0, 1)", "got -0.1")


def test_pruning_target_one_is_refused_with_what_nncf_would_do():
    exc = _error(params={"pruning_target": 1.0})
    _assert_reported(exc, "params.pruning_target", "would prune every filter", "caps every layer at 90%", "got 1.0")


def test_values_nncfs_schema_accepts():
    cfg = PruningConfig.from_dict({
        "params": {"pruning_steps": 15.0, "num_init_steps": 1.0, "pruning_flops_target": 0,
                   "legr_params": {"generations": 200.0, "random_seed": 42.0}},
        "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 2000.0}},
        "validate_scopes": False,
    })
    p = cfg.params
    assert (p.pruning_steps, p.num_init_steps, p.legr_params.generations, p.legr_params.random_seed) == (15, 1, 200, 42)
    assert type(p.pruning_steps) is int and cfg.initializer.batchnorm_adaptation.num_bn_adaptation_samples == 2000
    assert not cfg.prune_flops and p.pruning_flops_target is None and cfg.target == 0.5  # 0 means unset (NNCF)
    assert not cfg.validate_scopes
    flops = PruningConfig(pruning_target=0, pruning_flops_target=0.4)  # NNCF: a zero target does not conflict
    assert flops.prune_flops and flops.target == 0.4


def test_flops_target_out_of_range():
    _assert_reported(_error(pruning_flops_target=1.5), "params.pruning_flops_target", "[0, 1)", "got 1.5")


def test_pruning_init_out_of_range():
    _assert_reported(_error(pruning_init=1.0), "pruning_init", "expected a number in [0, 1)", "got 1.0")


def test_both_targets():
    exc = _error(params={"pruning_target": 0.3, "pruning_flops_target": 0.5})
    _assert_reported(
        exc, "params", "set either 'pruning_target' or 'pruning_flops_target', not both; got 0.3 and 0.5"
    )


def test_pruning_steps_zero():
    exc = _error(params={"pruning_steps": 0})
    _assert_reported(exc, "params.pruning_steps", "0 never reaches the target", "use 1", "got 0")


def test_string_for_number():
    exc = _error(params={"pruning_steps": "ten"})
    _assert_reported(exc, "params.pruning_steps", "expected an integer >= 1", "got 'ten'")


def test_numeric_string_for_float_rejected():
    _assert_reported(_error(pruning_target="0.3"), "params.pruning_target", "expected a number", "got '0.3'")


def test_wrong_type_float_for_int():
    _assert_reported(_error(pruning_steps=2.5), "params.pruning_steps", "expected an integer", "got 2.5")


@pytest.mark.parametrize(
    ("kwargs", "path", "expected"),
    [
        ({"pruning_steps": True}, "params.pruning_steps", "expected an integer >= 1"),
        ({"pruning_target": False}, "params.pruning_target", "expected a number in [0, 1) or null"),
        ({"all_weights": 1}, "params.all_weights", "expected a boolean"),
    ],
)
def test_bool_and_int_are_not_interchangeable(kwargs, path, expected):
    exc = _error(**kwargs)
    _assert_reported(exc, path, expected, f"got {next(iter(kwargs.values()))!r}")


def test_unknown_schedule():
    exc = _error(params={"schedule": "linear"})
    assert exc.errors == [
        ("params.schedule", "expected one of 'exponential', 'exponential_with_bias', 'baseline'; got 'linear'")
    ]


def test_wrong_algorithm():
    _assert_reported(_error(algorithm="quantization"), "algorithm", "expected 'filter_pruning'", "got 'quantization'")


def test_nested_legr_and_initializer_errors():
    exc = _error(
        legr_params={"max_pruning": 1.0, "scale_sigma": 0},
        initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": -1}},
    )
    assert dict(exc.errors) == {
        "params.legr_params.max_pruning": "expected a number in (0, 1) or null; got 1.0",
        "params.legr_params.scale_sigma": "expected a number > 0; got 0",
        "initializer.batchnorm_adaptation.num_bn_adaptation_samples": "expected an integer >= 0; got -1",
    }


def test_every_problem_on_its_own_line():
    exc = _error(params={"pruning_steps": 0, "schedule": "linear", "pruning_taget": 0.3}, pruning_init=2)
    lines = str(exc).splitlines()
    assert len(exc.errors) == 4
    assert len(lines) == 1 + len(exc.errors)
    assert sorted(path for path, _ in exc.errors) == [
        "params.pruning_steps",
        "params.pruning_taget",
        "params.schedule",
        "pruning_init",
    ]
    for path, problem in exc.errors:
        assert f"  {path}: {problem}" in lines


def test_scope_list_item_type():
    exc = _error(ignored_scopes=["a", 3])
    _assert_reported(exc, "ignored_scopes[1]", "string", "got 3")


def test_params_not_a_mapping():
    _assert_reported(_error(params=[1]), "params", "expected a mapping", "got [1]")


def test_flat_and_nested_duplicate():
    exc = _error(pruning_target=0.4, params={"pruning_target": 0.3})
    _assert_reported(exc, "pruning_target", "given both at top level and inside 'params'", "got 0.4 and 0.3")


def test_invalid_config_caught_with_every_other_hf_prune_error():
    """One ``except HfPruneError`` (the CLI's) catches a bad config; ``except ValueError`` still does too."""
    for caught in (HfPruneError, ValueError):
        with pytest.raises(caught, match="pruning_taget"):
            PruningConfig.from_dict({"algorithm": "filter_pruning", "pruning_taget": 0.3})


def test_no_filter_pruning_in_compression_list():
    compression = [{"algorithm": "quantization"}, {"algorithm": "magnitude_sparsity"}]
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_dict({"input_info": {"sample_size": [1, 3, 8, 8]}, "compression": compression})
    _assert_reported(
        info.value, "compression", "no 'filter_pruning'", "got algorithms ['quantization', 'magnitude_sparsity']"
    )


def test_single_compression_dict_of_other_algorithm():
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_dict({"compression": {"algorithm": "quantization"}})
    _assert_reported(info.value, "compression", "no 'filter_pruning'", "['quantization']")


def test_two_filter_pruning_entries():
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_dict({"compression": [NNCF_ALGO, NNCF_ALGO]})
    _assert_reported(info.value, "compression", "more than one 'filter_pruning'")


def test_errors_inside_compression_list_are_prefixed():
    compression = [{"algorithm": "quantization"}, {"algorithm": "filter_pruning", "params": {"pruning_steps": 0}}]
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_dict({"compression": compression})
    assert [p for p, _ in info.value.errors] == ["compression[1].params.pruning_steps"]


def test_from_dict_rejects_non_mapping():
    with pytest.raises(PruningConfigError, match=r"expected a mapping; got \[1, 2\]"):
        PruningConfig.from_dict([1, 2])


def test_yaml_error_names_pruning_section_and_file(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text("pruning:\n  params:\n    pruning_steps: ten\n")
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_file(path)
    _assert_reported(info.value, "pruning.params.pruning_steps", "expected an integer >= 1", "got 'ten'")
    assert info.value.source == path
    assert str(path) in str(info.value).splitlines()[0]


# --- file errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.json", "missing.yaml"])
def test_missing_file(tmp_path: Path, name: str):
    path = tmp_path / name
    with pytest.raises(FileNotFoundError) as info:
        PruningConfig.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("name", "text"), [("bad.json", "{not json"), ("bad.yaml", "params: [unclosed\n")])
def test_parse_error_names_file(tmp_path: Path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PruningConfigError, match="cannot parse") as info:
        PruningConfig.from_file(path)
    assert str(path) in str(info.value)


def test_unknown_extension(tmp_path: Path):
    path = tmp_path / "cfg.toml"
    path.write_text("x = 1\n")
    with pytest.raises(PruningConfigError) as info:
        PruningConfig.from_file(path)
    assert "'.toml'" in str(info.value)
    assert str(path) in str(info.value)
