"""Recipes: every shipped one validates; bad ones fail before anything runs, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_prune.app.recipes import RecipeError, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path, tmp_path):
    overrides = [f"data.path={tmp_path}"] if "imagefolder" in path.read_text() else []
    recipe = load_recipe(path, overrides)
    assert recipe.pruning_config().target > 0
    assert recipe.training_arguments().output_dir
    # the objects validated with the recipe are the ones the run gets, not rebuilt from the dicts
    assert recipe.pruning_config() is recipe.pruning_config()
    assert recipe.training_arguments() is recipe.training_arguments()


def _write(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _demo():
    return yaml.safe_load((RECIPES[0].parent / "demo.yaml").read_text())


def test_overrides_are_applied_and_typed(tmp_path):
    recipe = load_recipe(RECIPES[0].parent / "demo.yaml",
                         ["training.num_train_epochs=2", "pruning.params.pruning_steps=5", "model.image_size=16"])
    assert recipe.training["num_train_epochs"] == 2 and recipe.model.image_size == 16
    assert recipe.pruning_config().params.pruning_steps == 5
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(RECIPES[0].parent / "demo.yaml", ["training.num_train_epochs"])


def test_every_problem_is_named_at_once(tmp_path):
    data = _demo()
    data["modle"] = {}
    data["training"]["num_train_epocs"] = 3
    data["pruning"]["params"]["pruning_taget"] = 0.1
    data["data"] = {"source": "imagefolder", "path": str(tmp_path / "missing")}
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, data))
    msg = str(e.value)
    assert "r.yaml" in msg
    assert "modle: unknown key; did you mean 'model'?" in msg
    assert "training.num_train_epocs: not a TrainingArguments field; did you mean 'num_train_epochs'?" in msg
    assert "pruning.params.pruning_taget: unknown key; did you mean 'pruning_target'?" in msg
    assert "data.path: image folder" in msg and "does not exist" in msg


@pytest.mark.parametrize("change, expected", [
    ({"model": {"pretrained": True}}, "model: Value error, give exactly one of 'name' or 'config'"),
    ({"data": {"source": "hub"}}, "source 'hub' needs 'name'"),
    ({"data": {"source": "ftp"}}, "data.source"),
    ({"dense_epochs": -1}, "dense_epochs"),
    ({"outputs": {"onxx": True}}, "outputs.onxx: unknown key; did you mean 'onnx'?"),
])
def test_section_errors(tmp_path, change, expected):
    data = _demo()
    data.update(change)
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?").replace("Value error, ", "")):
        load_recipe(_write(tmp_path, data))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
