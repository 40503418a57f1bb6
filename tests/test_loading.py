"""Reloading stripped transformers models through transformers' own entry points, on either stack: in a
process that never imports hf_prune (the start-up hook), with a new head, through pipeline(), TimmWrapper
models, damaged files; and what ``import hf_prune`` costs."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor, pipeline,
)

import hf_prune
from hf_prune.integrations.serialization import PrunedModelError, from_pretrained, logits, save_pretrained

from conftest import randomize_norms
from test_serialization import assert_same, pruned

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with this checkout first on the path and its ``hf_prune_autoload.pth``
    processed, as an installed hf_prune's is at start-up (``env``: more environment variables)."""
    code = f"import site; site.addsitedir({str(ROOT)!r})\n{code}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture
def saved_vit(tmp_path: Path) -> Path:
    """A stripped transformers ViT saved by transformers' own save_pretrained, with an image processor."""
    _, _, small = pruned("hf_vit")
    small.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


LOAD_WITHOUT_IMPORT = """
import sys
print("at start-up:", sorted(m for m in ("hf_prune", "torch", "transformers") if m in sys.modules))
import torch
from transformers import AutoModelForImageClassification, pipeline
expected = torch.load({expected!r})
model = AutoModelForImageClassification.from_pretrained({directory!r}).eval()
classify = pipeline("image-classification", model={directory!r})
with torch.no_grad():
    for loaded in (model, classify.model):
        print(type(loaded).__name__, torch.equal(loaded(pixel_values=expected["x"]).logits, expected["logits"]))
"""


def test_a_process_that_never_imports_hf_prune_loads_stripped_models(saved_vit: Path, tmp_path: Path) -> None:
    _, _, small = pruned("hf_vit")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save({"x": x, "logits": small(pixel_values=x).logits}, tmp_path / "expected.pt")
    code = LOAD_WITHOUT_IMPORT.format(expected=str(tmp_path / "expected.pt"), directory=str(saved_vit))
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "at start-up: []"  # the start-up hook imports nothing heavy
    assert result.stdout.splitlines()[-2:] == ["ViTForImageClassification True"] * 2

    opted_out = run_python(code, HF_PRUNE_NO_AUTOLOAD="1")  # transformers' own failure, naming the record
    assert opted_out.returncode != 0 and "Unknown quantization type, got hf_prune" in opted_out.stderr
    with_import = run_python(f"import hf_prune\n{code}", HF_PRUNE_NO_AUTOLOAD="1")
    assert with_import.returncode == 0 and with_import.stdout.splitlines()[-1].endswith("True"), \
        with_import.stderr[-3000:]


def test_the_installed_distribution_ships_the_start_up_hook() -> None:
    """``pip install hf_prune`` and the Makefile's ``uv pip install -e .`` put hf_prune_autoload.pth into
    site-packages beside hf_prune's metadata (setup.py)."""
    installed = [Path(d) for d in site.getsitepackages() if list(Path(d).glob("hf_prune-*.dist-info"))]
    if not installed:
        pytest.skip("hf_prune is not installed in this interpreter's site-packages")
    for directory in installed:
        pth = directory / "hf_prune_autoload.pth"
        assert pth.is_file(), f"{directory} holds hf_prune but not hf_prune_autoload.pth"
        assert pth.read_text() == (ROOT / "hf_prune_autoload.pth").read_text()


def test_pipeline_loads_a_stripped_directory(saved_vit: Path) -> None:
    classify = pipeline("image-classification", model=str(saved_vit))
    _, _, small = pruned("hf_vit")
    assert_same(classify.model, small)
    image = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
    from PIL import Image

    predictions = classify(Image.fromarray(image), top_k=3)
    assert len(predictions) == 3 and all(p["label"].startswith("LABEL_") for p in predictions)


def test_a_new_head_loads_on_the_stripped_backbone(saved_vit: Path) -> None:
    _, _, small = pruned("hf_vit")
    model = AutoModelForImageClassification.from_pretrained(saved_vit, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 3 and model.classifier.in_features == small.classifier.in_features
    backbone = {k: v for k, v in small.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    assert logits(model.eval(), torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes|size mismatch for bias"):  # transformers refuses a silent head change
        AutoModelForImageClassification.from_pretrained(saved_vit, num_labels=3)


def test_timm_wrapper_models_save_and_reload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = TimmWrapperConfig(architecture="test_resnet", num_labels=5)
    model = randomize_norms(TimmWrapperForImageClassification(config)).eval()
    x = torch.randn(1, 3, 32, 32)
    controller = hf_prune.create_pruning_controller(model, {"pruning_init": 0.5}, example_inputs={"pixel_values": x})
    small = controller.strip_model(do_copy=True)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    save_pretrained(small, tmp_path / "wrapped")
    for loaded in (from_pretrained(tmp_path / "wrapped"),
                   AutoModelForImageClassification.from_pretrained(tmp_path / "wrapped")):
        assert_same(loaded, small)


def test_truncated_weights_are_named(saved_vit: Path) -> None:
    weights = saved_vit / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PrunedModelError, match=r"model\.safetensors: not a readable safetensors file"):
        from_pretrained(saved_vit)
    with pytest.raises(Exception, match="model.safetensors: not a readable|incomplete metadata"):
        AutoModelForImageClassification.from_pretrained(saved_vit)  # transformers 4.57 reads the file first


def test_saved_config_keeps_the_architecture_for_every_consumer(saved_vit: Path) -> None:
    config = json.loads((saved_vit / "config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTForImageClassification"]
    record = config["quantization_config"]
    assert record["quant_method"] == "hf_prune" and record["dense_shapes"].keys() == record["shape_spec"]["shapes"].keys()
    model = AutoModelForImageClassification.from_pretrained(saved_vit)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None


def test_import_is_light() -> None:
    heavy = ["torch", "transformers", "timm", "accelerate", "onnxruntime", "onnx", "optimum", "datasets",
             "sklearn", "matplotlib", "pydantic"]
    result = run_python(f"import sys, hf_prune; print([m for m in {heavy!r} if m in sys.modules])")
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
    lazy = run_python("import sys, hf_prune; hf_prune.PruningConfig; print('timm' in sys.modules, "
                      "hf_prune.PruningConfig.__module__)")
    assert lazy.stdout.split() == ["False", "hf_prune.config"]


def test_an_unknown_repo_id_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fail at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PrunedModelError, match=r"hf-prune-nobody/no-such-model: not a local directory, and the "
                                               r"Hub has no such repository or cannot be reached"):
        from_pretrained("hf-prune-nobody/no-such-model")
