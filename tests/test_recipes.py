"""Recipes: every shipped one validates; bad ones fail before anything runs, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from transformers import TrainingArguments

from hf_prune import PruningConfig
from hf_prune.app.recipes import DEFAULT_OUTPUT_DIR, RecipeError, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate_and_round_trip(path, tmp_path):
    overrides = [f"data.path={tmp_path}"] if "imagefolder" in path.read_text() else []
    recipe = load_recipe(path, overrides)
    # typed objects, which the run uses as they are
    assert isinstance(recipe.training, TrainingArguments) and isinstance(recipe.pruning, PruningConfig)
    assert recipe.training.output_dir == yaml.safe_load(path.read_text())["training"]["output_dir"]
    assert recipe.pruning.target > 0
    again = load_recipe(_write(tmp_path, recipe.to_dict()))
    assert again == recipe and again.to_dict() == recipe.to_dict()


def _write(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _demo():
    return yaml.safe_load((RECIPES[0].parent / "demo.yaml").read_text())


def test_overrides_are_applied_and_typed(tmp_path):
    recipe = load_recipe(RECIPES[0].parent / "demo.yaml",
                         ["training.num_train_epochs=2", "pruning.params.pruning_steps=5", "model.image_size=16"])
    assert recipe.training.num_train_epochs == 2 and recipe.model.image_size == 16
    assert recipe.pruning.params.pruning_steps == 5
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


def test_training_values_are_typed(tmp_path):
    data = _demo()
    data["training"].update(learning_rate="1e-4", per_device_train_batch_size=2.5, num_train_epochs="three",
                            eval_strategy="epoch")  # YAML reads 1e-4 (no dot) as a string
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, data))
    msg = str(e.value)
    assert "r.yaml" in msg and "learning_rate" not in msg
    assert "training.per_device_train_batch_size: Input should be a valid integer" in msg and "got 2.5" in msg
    assert "training.num_train_epochs: Input should be a valid number" in msg and "got 'three'" in msg
    del data["training"]["per_device_train_batch_size"], data["training"]["num_train_epochs"]
    training = load_recipe(_write(tmp_path, data)).training
    assert training.learning_rate == 1e-4 and training.eval_strategy == "epoch"


def test_training_arguments_own_checks_and_defaults(tmp_path):
    data = _demo()
    data["training"].update(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps")
    with pytest.raises(RecipeError, match=r"r\.yaml:\n  training: .*load_best_model_at_end"):
        load_recipe(_write(tmp_path, data))
    del data["training"]
    assert load_recipe(_write(tmp_path, data)).training.output_dir == DEFAULT_OUTPUT_DIR
    data["training"] = ["output_dir", "x"]
    with pytest.raises(RecipeError, match="training: expected a mapping of TrainingArguments fields"):
        load_recipe(_write(tmp_path, data))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
