"""Produce the reference data of tests/test_nncf_conformance.py by running NNCF 2.19 itself.

Not run by CI; NNCF is never a dependency of hf_prune. Run it in a throwaway venv, e.g.::

    uv venv /tmp/nncf-venv && VIRTUAL_ENV=/tmp/nncf-venv uv pip install "nncf==2.19.*" torch torchvision
    NNCF_TORCH_LEGACY_TRACING=1 /tmp/nncf-venv/bin/python tests/scripts/nncf_reference.py /tmp/nncf_ref.json

Models: torchvision ResNet-18/50 initialised after ``torch.manual_seed(0)``, input 1x3x64x64.
Layer names are converted from NNCF's ``ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]`` to module
names (``layer1.0.conv1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile

os.environ.setdefault("NNCF_TORCH_LEGACY_TRACING", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402
import nncf  # noqa: E402
from nncf import NNCFConfig  # noqa: E402
from nncf.common.pruning.schedulers import PRUNING_SCHEDULERS  # noqa: E402
from nncf.torch import create_compressed_model  # noqa: E402

SIZE = [1, 3, 64, 64]


def module_name(nncf_name: str) -> str:
    return ".".join(re.findall(r"\[([^\]]+)\]", nncf_name))


def resnet(name: str, gray: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    if gray:
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


def controller(model, algo: dict, size=SIZE):
    cfg = NNCFConfig.from_dict({"input_info": {"sample_size": size}, "compression": {"algorithm": "filter_pruning", **algo}})
    ctrl, _ = create_compressed_model(model, cfg)
    return ctrl


def pruned(ctrl) -> dict[str, list[int]]:
    out = {}
    for minfo in ctrl.pruned_module_groups_info.get_all_nodes():
        mask = ctrl.get_mask(minfo)
        out[module_name(minfo.node_name)] = [int(i) for i in torch.nonzero(mask == 0).flatten()]
    return dict(sorted(out.items()))


def digest(indices: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(indices, sort_keys=True).encode()).hexdigest()


def model_statistics(ctrl) -> dict:
    s = ctrl.statistics().filter_pruning
    m = s.model_statistics
    return {
        "full_flops": m.full_flops, "current_flops": m.current_flops,
        "full_params_num": m.full_params_num, "current_params_num": m.current_params_num,
        "full_filters_num": m.full_filters_num, "current_filters_num": m.current_filters_num,
        "layers": {module_name(layer.name): [layer.weight_shape, layer.mask_shape, layer.filter_pruning_level]
                   for layer in m.pruned_layers_summary},
        "current_pruning_level": s.current_pruning_level, "target_pruning_level": s.target_pruning_level,
    }


class _Ctrl:  # what NNCF's schedulers read from a controller
    def __init__(self, pruning_init: float, prune_flops: bool = False):
        self.pruning_init, self.prune_flops, self.frozen_at, self.levels = pruning_init, prune_flops, None, []
        self.epoch = -1

    def set_pruning_level(self, level):
        self.levels.append(level)

    def freeze(self):
        if self.frozen_at is None:
            self.frozen_at = len(self.levels) - 1


def schedules() -> dict:
    cases = {
        "exponential_0.1_0.4_s15_i1": ("exponential", 0.1, {"pruning_target": 0.4, "pruning_steps": 15, "num_init_steps": 1}, 20),
        "exponential_0_0.5_s3": ("exponential", 0.0, {"pruning_target": 0.5, "pruning_steps": 3}, 6),
        "exponential_0_0.1_s1": ("exponential", 0.0, {"pruning_target": 0.1, "pruning_steps": 1}, 4),
        "exponential_0_0.5_s0": ("exponential", 0.0, {"pruning_target": 0.5, "pruning_steps": 0}, 4),
        "exponential_0.5_0.3_s5": ("exponential", 0.5, {"pruning_target": 0.3, "pruning_steps": 5}, 10),
        "exponential_with_bias_0_0.5_s17": ("exponential_with_bias", 0.0, {"pruning_target": 0.5, "pruning_steps": 17}, 20),
        "exponential_with_bias_0.1_0.4_s15_i1": ("exponential_with_bias", 0.1, {"pruning_target": 0.4, "pruning_steps": 15, "num_init_steps": 1}, 20),
        "exponential_with_bias_0.5_0.3_s5": ("exponential_with_bias", 0.5, {"pruning_target": 0.3, "pruning_steps": 5}, 10),
        "exponential_with_bias_0_0.4_s1": ("exponential_with_bias", 0.0, {"pruning_target": 0.4, "pruning_steps": 1}, 4),
        "baseline_0.4_i2": ("baseline", 0.0, {"pruning_target": 0.4, "num_init_steps": 2}, 5),
    }
    out = {}
    for key, (schedule, init, params, epochs) in cases.items():
        ctrl = _Ctrl(init)
        try:
            sched = PRUNING_SCHEDULERS.get(schedule)(ctrl, params)
            for _ in range(epochs):
                sched.epoch_step()
            out[key] = {"levels": [float(v) for v in ctrl.levels], "freeze_epoch": ctrl.frozen_at}
        except Exception as exc:  # noqa: BLE001 - the failure is the reference
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def resnet18_run() -> dict:
    ctrl = controller(resnet("resnet18"), {"pruning_init": 0.1, "params": {
        "schedule": "exponential", "pruning_target": 0.4, "pruning_steps": 15}})
    epochs = []
    for _ in range(17):
        ctrl.scheduler.epoch_step()
        epochs.append([float(ctrl.scheduler.current_pruning_level), float(ctrl.compression_rate),
                       int(ctrl.compression_stage()), bool(ctrl.frozen)])
    out = {"epochs": epochs, "pruned": pruned(ctrl), "statistics": model_statistics(ctrl)}
    before = pruned(ctrl)
    ctrl.set_pruning_level(0.2)  # frozen: masks stay, level is recorded
    out["frozen_set_pruning_level"] = {"pruning_level": ctrl.pruning_level, "masks_changed": pruned(ctrl) != before,
                                       "frozen": ctrl.frozen}
    ctrl.compression_rate = 0.2  # setter: unfreezes, re-masks, freezes again
    out["frozen_compression_rate_setter"] = {"pruning_level": ctrl.pruning_level, "masks_changed": pruned(ctrl) != before,
                                             "frozen": ctrl.frozen, "pruned": {k: len(v) for k, v in pruned(ctrl).items()}}
    return out


def level_run(name: str, level: float, gray: bool = False, **params) -> dict:
    size = [1, 1, 64, 64] if gray else SIZE
    ctrl = controller(resnet(name, gray), {"params": {"pruning_target": 0.5, **params}}, size)
    ctrl.set_pruning_level(level)
    idx = pruned(ctrl)
    return {"pruned_counts": {k: len(v) for k, v in idx.items()}, "digest": digest(idx),
            "full_flops": ctrl.full_flops, "current_flops": ctrl.current_flops, "statistics": model_statistics(ctrl),
            "groups": sorted(sorted(module_name(m.node_name) for m in c.elements)
                             for c in ctrl.pruned_module_groups_info.get_all_clusters())}


def flops_run(name: str, target: float) -> dict:
    ctrl = controller(resnet(name), {"params": {"pruning_flops_target": target}})
    ctrl.set_pruning_level(target)
    idx = pruned(ctrl)
    return {"pruned_counts": {k: len(v) for k, v in idx.items()}, "digest": digest(idx),
            "full_flops": ctrl.full_flops, "current_flops": ctrl.current_flops,
            "compression_rate": ctrl.compression_rate, "maximal_compression_rate": ctrl.maximal_compression_rate,
            "compression_stage": int(ctrl.compression_stage())}


def scopes_run() -> dict:
    out = {}
    for key, scopes in {
        "path": ["ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]"],
        "nncf_path": ["ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]"],
        "node": ["ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0"],
        "regex": ["{re}.*layer2.*"],
        "regex_partial": ["{re}layer3"],
    }.items():
        try:
            ctrl = controller(resnet("resnet18"), {"ignored_scopes": scopes, "params": {"pruning_target": 0.5}})
            out[key] = sorted(module_name(m.node_name) for m in ctrl.pruned_module_groups_info.get_all_nodes())
        except Exception as exc:  # noqa: BLE001
            out[key] = f"{type(exc).__name__}: {exc}"
    ctrl = controller(resnet("resnet18"), {"target_scopes": ["{re}.*layer4.*"], "params": {"pruning_target": 0.5}})
    out["target_regex"] = sorted(module_name(m.node_name) for m in ctrl.pruned_module_groups_info.get_all_nodes())
    return out


def legr_run() -> dict:
    model = resnet("resnet18")
    # coefficients keyed by NNCF node names, as NNCF writes them with save_ranking_coeffs_path
    base = controller(resnet("resnet18"), {"params": {"pruning_target": 0.5}})
    names = [m.node_name for m in base.pruned_module_groups_info.get_all_nodes()]
    coeffs = {n: [1.0 + 0.1 * i, 0.01 * (i % 3)] for i, n in enumerate(names)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(coeffs, f)
    ctrl = controller(model, {"params": {"interlayer_ranking_type": "learned_ranking", "pruning_target": 0.5,
                                         "load_ranking_coeffs_path": f.name}})
    ctrl.set_pruning_level(0.5)
    idx = pruned(ctrl)
    return {"coefficients": coeffs, "all_weights": ctrl.all_weights,
            "pruned_layers": sorted(idx), "pruned_counts": {k: len(v) for k, v in idx.items()}, "digest": digest(idx)}


def main() -> None:
    out = os.path.abspath(sys.argv[1])
    os.chdir(tempfile.mkdtemp())  # NNCF writes its graph dumps (*.dot) into the working directory
    nncf.set_log_level(logging.ERROR)
    ref = {"schedules": schedules(), "resnet18": resnet18_run(),
           "resnet18_level_0.4": level_run("resnet18", 0.4), "resnet50_level_0.4": level_run("resnet50", 0.4),
           "resnet18_gray": level_run("resnet18", 0.4, gray=True),
           "resnet18_flops_0.3": flops_run("resnet18", 0.3), "resnet50_flops_0.5": flops_run("resnet50", 0.5),
           "scopes": scopes_run(), "legr": legr_run()}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
