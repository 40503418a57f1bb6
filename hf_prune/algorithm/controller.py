"""FilterPruningController: NNCF's filter-pruning controller, with a physical strip."""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..config import PruningConfig
from ..distributed import is_main_process
from ..errors import NothingPrunableError, PruningLevelError, PruningStateError
from ..graph.analysis import ModelAnalysis, analyze_model
from ..graph.groups import PruningGroup, PruningPolicy, nncf_scopes
from ..graph.norms import norm_masks
from ..graph.record import record_strip
from ..graph.surgery import strip, zero_pruned
from .bn_adaptation import adapt_batchnorm
from .importance import IMPORTANCE, group_importance
from .latency import DeployTarget, LatencyModel, auto_channel_multiple, measure_latency
from .masks import WeightMasker, _MaskHook, parameter_users, remove_mask_hooks
from .ranking import (
    RankingCoefficients, RankingCoefficientsError, RewardFn, TrainFn, learn_ranking_coefficients,
)
from .planning import (
    MAX_GLOBAL_GROUP_LEVEL, CostModel, FlopsCost, Plan, fit_units, kept_count, kept_fractions, minimal_plan,
    plan_by_benefit, plan_for_cost, plan_for_level, relax_units,
)
from .schedulers import SCHEDULERS, PruningScheduler, StubScheduler
from .statistics import PruningStatistics, collect_statistics

STRIP_FORMATS = ("native", "zeros")


@dataclass
class PrunedModuleInfo:
    """A producer layer of a prunable group (NNCF's ``minfo``); ``mask`` is its live filter mask."""

    module_name: str
    module: nn.Module
    group_id: int
    param: str
    dim: int
    _controller: "FilterPruningController"

    @property
    def mask(self) -> torch.Tensor:
        return self._controller.param_dim_mask(self.param, self.dim)


@dataclass
class PrunedCluster:
    """One pruning group's producer layers (NNCF's ``Cluster``: ``id`` and ``elements``)."""

    id: int
    elements: list[PrunedModuleInfo]


class PrunedModuleGroups(dict[int, PrunedCluster]):
    """Group id -> :class:`PrunedCluster`, with NNCF's ``Clusterization`` methods."""

    def get_all_clusters(self) -> list[PrunedCluster]:
        return list(self.values())

    def get_all_nodes(self) -> list[PrunedModuleInfo]:
        return [info for cluster in self.values() for info in cluster.elements]

    def get_cluster_by_id(self, cluster_id: int) -> PrunedCluster:
        return self[cluster_id]


class CompressionLoss:
    """NNCF's filter-pruning loss is zero; ``regularization_weight`` > 0 adds a group-lasso term on
    the filters currently masked, pushing the channels about to be removed toward zero."""

    def __init__(self, controller: "FilterPruningController", weight: float) -> None:
        self._controller = controller
        self.weight = weight
        self._cache: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        self._cache_version = -1

    def __call__(self) -> torch.Tensor:
        return self.calculate()

    def calculate(self) -> torch.Tensor:
        ctrl = self._controller
        if self.weight == 0 or not ctrl.levels_nonzero:
            return torch.zeros((), device=next(ctrl.model.parameters(), torch.zeros(())).device)
        total = None
        for w, dim, pruned in self._pruned_filters():
            norms = w.movedim(dim, 0).reshape(w.shape[dim], -1).norm(dim=1)
            term = (norms * pruned).sum()
            total = term if total is None else total + term
        return self.weight * total

    def _pruned_filters(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """``(weight, dim, 0/1 pruned-filter mask on the weight's device)`` for every producer, rebuilt only
        when the masks change: no host-device transfer or synchronisation per training step."""
        ctrl = self._controller
        if self._cache_version != ctrl.mask_version:
            params = dict(ctrl.model.named_parameters())
            self._cache = [(params[info.param], info.dim,
                            (~info.mask).to(device=params[info.param].device, dtype=params[info.param].dtype))
                           for info in ctrl.pruned_modules]
            self._cache_version = ctrl.mask_version
        return self._cache

    def statistics(self, quickly_collected_only: bool = False) -> dict[str, float]:
        return {"regularization_weight": self.weight}


class FilterPruningController:
    """Masks whole filters of a model on a schedule and strips them at the end.

    Created by :func:`create_pruning_controller`. The model keeps its parameters; masks act in the
    forward pass. ``strip_model`` returns the model with the pruned channels physically removed.
    """

    def __init__(self, model: nn.Module, config: PruningConfig, analysis: ModelAnalysis) -> None:
        self.model = model
        self.config = config
        self.analysis = analysis
        self.prune_flops = config.prune_flops
        self.prune_latency = config.prune_latency
        self.pruning_init = config.pruning_init
        self.target_level = config.target
        self._criterion = config.params.filter_importance
        if self._criterion not in IMPORTANCE:
            raise PruningLevelError(f"params.filter_importance: unknown criterion {self._criterion!r}")
        self._groups = {g.id: g for g in analysis.prunable_groups}
        self.latency: LatencyModel | None = None
        if self.prune_latency:
            self.latency = LatencyModel.build(model, analysis, analysis.prunable_groups,
                                              DeployTarget.from_config(config.params, model),
                                              config.params.latency_table_path)
        self._coords = self._producer_coords()
        self._masks: dict[int, torch.Tensor] = {gid: torch.ones(g.size, dtype=torch.bool) for gid, g in self._groups.items()}
        self._pruning_level = 0.0
        self._frozen = False
        self._masker = WeightMasker()
        self._users = parameter_users(self.analysis.trace.uses)
        self.mask_version = 0  # incremented whenever the masks change
        self.data_loader: Iterable[Any] | None = None
        self.measured_latency_ms: float | None = None
        self.pruned_modules = [
            PrunedModuleInfo(m.module, model.get_submodule(m.module), g.id, m.param, m.dim, self)
            for g in self._groups.values() for m in g.members if m.role == "out"
        ]
        self._loss = CompressionLoss(self, config.params.regularization_weight)
        self.ranking: RankingCoefficients | None = None
        if config.params.interlayer_ranking_type == "learned_ranking":
            signature = {gid: g.size for gid, g in self._groups.items()}
            path = config.params.load_ranking_coeffs_path
            self.ranking = self._load_ranking(path) if path else RankingCoefficients.identity(signature)
        params = config.params
        self._scheduler: PruningScheduler = SCHEDULERS[params.schedule](
            self, self.pruning_init, self.target_level, params.num_init_steps, params.pruning_steps)
        self._install_masks()
        if self.pruning_init > 0:
            self.set_pruning_level(self.pruning_init)

    # ------------------------------------------------------------------ NNCF surface
    @property
    def full_flops(self) -> float:
        """FLOPs of the dense model (NNCF's ``full_flops``)."""
        return self.analysis.dense_flops

    @property
    def full_params_num(self) -> float:
        """Parameters of the dense model (NNCF's ``full_params_num``)."""
        return self.analysis.dense_params

    @property
    def current_params_num(self) -> float:
        """Parameters left by the current masks (NNCF's ``current_params_num``)."""
        return self.current_params

    @property
    def pruned_module_groups_info(self) -> PrunedModuleGroups:
        """The pruned layers by group, with NNCF's clusterization API (``get_all_nodes()``, ...)."""
        groups = PrunedModuleGroups()
        for info in self.pruned_modules:
            groups.setdefault(info.group_id, PrunedCluster(info.group_id, [])).elements.append(info)
        return groups

    def get_state(self) -> dict[str, Any]:
        """NNCF's name for :meth:`state_dict`."""
        return self.state_dict()

    def load_state(self, state: Mapping[str, Any]) -> None:
        """NNCF's name for :meth:`load_state_dict`."""
        self.load_state_dict(state)

    @property
    def loss(self) -> CompressionLoss:
        return self._loss

    @property
    def scheduler(self) -> PruningScheduler:
        return self._scheduler

    @property
    def pruning_level(self) -> float:
        """The global pruning level last set (a FLOPs fraction in FLOPs mode)."""
        return self._pruning_level

    @property
    def current_groupwise_pruning_level(self) -> dict[int, float]:
        """Group id → fraction of the group's channels currently masked."""
        return {gid: 1.0 - int(m.sum()) / m.numel() for gid, m in self._masks.items()}

    @property
    def compression_rate(self) -> float:
        """NNCF's rate: in FLOPs mode the FLOPs reduction, with a latency target the predicted latency
        reduction, otherwise the level last set (rounding kept
        channels up to ``channel_multiple`` masks a little less; ``statistics()`` reports the masked fraction).
        0 for a model with nothing prunable."""
        if self.prune_flops:
            return 1.0 - self.current_flops / self.analysis.dense_flops
        if self.latency is not None:
            return 1.0 - self.predicted_latency_ms / self.latency.dense
        return self._pruning_level if self._groups else 0.0

    @compression_rate.setter
    def compression_rate(self, value: float) -> None:
        """Set the level, as NNCF does: also on a frozen controller, which stays frozen at the new masks."""
        was_frozen, self._frozen = self._frozen, False
        try:
            self.set_pruning_level(value)
        finally:
            self._frozen = was_frozen

    @property
    def maximal_compression_rate(self) -> float:
        cost = self._cost_model()
        if cost is None:
            return 1.0
        return 1.0 - cost.cost(kept_fractions(self._groups, minimal_plan(self._groups))) / cost.dense

    @staticmethod
    def get_mask(minfo: PrunedModuleInfo) -> torch.Tensor:
        """The filter mask (True = kept) of a pruned module's output channels."""
        return minfo.mask

    def compression_stage(self) -> int:
        """0: uncompressed, 1: partially compressed, 2: fully compressed (rate ≥ target, NNCF's tolerance 1e-5)."""
        rate = self.compression_rate
        if rate == 0:
            return 0
        return 2 if math.isclose(rate, self.target_level, abs_tol=1e-5) or rate > self.target_level else 1

    def disable_scheduler(self) -> None:
        """Keep the current level for the rest of training."""
        stub = StubScheduler(self._pruning_level)
        stub.current_epoch, stub.current_step = self._scheduler.current_epoch, self._scheduler.current_step
        self._scheduler = stub

    def freeze(self, freeze: bool = True) -> None:
        """Stop recomputing masks (the schedule's end); ``freeze(False)`` lets levels change again (NNCF)."""
        self._frozen = freeze

    @property
    def frozen(self) -> bool:
        return self._frozen

    def set_pruning_level(self, pruning_level: float | Mapping[int, float], run_batchnorm_adaptation: bool = False) -> None:
        """Set a global level (filters, or FLOPs in FLOPs mode) or ``{group_id: level}``.

        Masks are recomputed from the current weights. With ``run_batchnorm_adaptation`` the BatchNorm
        statistics are re-estimated afterwards on the controller's ``data_loader``.

        A frozen controller keeps its masks and its level and warns (NNCF keeps the masks but records
        the new level, so its ``compression_rate`` then reports a level the masks do not have); use the
        ``compression_rate`` setter or ``freeze(False)`` to change a frozen controller.
        """
        if self._frozen:
            if isinstance(pruning_level, Mapping) or pruning_level != self._pruning_level:
                warnings.warn(f"set_pruning_level({pruning_level!r}) ignored: the controller is frozen at level "
                              f"{self._pruning_level:.4g} (set compression_rate or call freeze(False) to change it)",
                              UserWarning, stacklevel=2)
            return
        scores = self._importance()
        if isinstance(pruning_level, Mapping):
            levels = self._validate_group_levels(pruning_level)
            keep = {gid: kept_count(self._groups[gid], lv) for gid, lv in levels.items()}
            self._pruning_level = float(sum(levels.values()) / len(levels)) if levels else 0.0
        else:
            level = self._validate_level(pruning_level, "pruning_level")
            keep = self._plan(level, scores)
            self._pruning_level = level
        self._apply_plan(keep, scores)
        if run_batchnorm_adaptation:
            adapt_batchnorm(self.model, self.data_loader,
                            self.config.initializer.batchnorm_adaptation.num_bn_adaptation_samples)

    def set_ranking_coefficients(self, coefficients: RankingCoefficients) -> None:
        """Use LeGR coefficients for global ranking from the next level change on."""
        expected = {gid: g.size for gid, g in self._groups.items()}
        if coefficients.signature != expected:
            raise RankingCoefficientsError("ranking coefficients were learned for different pruning groups")
        legr = self.config.params.legr_params
        if legr.max_pruning is None:  # a config without learned_ranking: LeGR's default cap, the target
            legr.max_pruning = self.target_level
        self.ranking = coefficients

    def learn_ranking(self, train_fn: TrainFn, reward_fn: RewardFn, show_progress: bool = True) -> RankingCoefficients:
        """Run the LeGR search (``legr_params``), adopt the best coefficients and save them to
        ``save_ranking_coeffs_path`` if configured (main process only). See :mod:`.ranking`."""
        was_frozen, self._frozen = self._frozen, False
        try:
            best = learn_ranking_coefficients(self, train_fn, reward_fn, self.config.params.legr_params,
                                              show_progress=show_progress)
        finally:
            self._frozen = was_frozen
        self.set_ranking_coefficients(best)
        path = self.config.params.save_ranking_coeffs_path
        if path and is_main_process():
            best.save(path)
        return best

    def statistics(self, quickly_collected_only: bool = False) -> PruningStatistics:
        return collect_statistics(self, quickly_collected_only)

    def prepare_for_export(self) -> None:
        """Bake the masks into the weights (zeroed filters, same shapes), as NNCF does before export. Weights
        standardized in forward (BiT, NFNets) stay as they are: zeros cannot stand for their pruned inputs, their
        mask hooks keep masking them (``strip_model(strip_format="zeros")`` gives an exact zeroed copy)."""
        zero_pruned(self.model, self.analysis.trace, self.leaf_masks(), zero_norms=self.config.params.prune_batch_norms,
                    standardized=False)

    def summary(self) -> dict[str, Any]:
        """What a stripped model's pruning record keeps of this controller: the model class, the pruning
        config and the statistics (without the per-layer table)."""
        statistics = self.statistics().to_dict()
        del statistics["layers"]
        return {"model_class": self.analysis.model_class, "config": self.config.to_dict(), "statistics": statistics}

    def strip_model(self, model: nn.Module | None = None, do_copy: bool = False, strip_format: str = "native") -> nn.Module:
        """The model without pruning machinery: ``native`` removes pruned channels physically (same
        classes, smaller tensors) and records the new shapes in the model (:func:`~hf_prune.graph.record.record_strip`:
        a transformers or timm model then saves and reloads stripped); ``zeros`` keeps shapes with pruned
        filters zeroed (NNCF's format)."""
        if strip_format not in STRIP_FORMATS:
            raise ValueError(f"strip_format must be one of {STRIP_FORMATS}, got {strip_format!r}")
        model = self.model if model is None else model
        if do_copy:
            model = copy.deepcopy(model)
            remove_mask_hooks(model)
        elif model is self.model:
            self._masker.remove()
        if strip_format == "native":
            strip(model, self.analysis.trace, self.leaf_masks())
            record_strip(model, self.summary())
            return model
        return zero_pruned(model, self.analysis.trace, self.leaf_masks(), zero_norms=self.config.params.prune_batch_norms)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {gid: m.clone() for gid, m in self._masks.items()},
            "pruning_level": self._pruning_level,
            "frozen": self._frozen,
            "scheduler": self._scheduler.state_dict(),
            "scheduler_disabled": isinstance(self._scheduler, StubScheduler),
            "ranking": {gid: list(ab) for gid, ab in self.ranking.coefficients.items()} if self.ranking else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = {int(k): v for k, v in state["masks"].items()}
        if set(masks) != set(self._masks) or any(masks[g].numel() != self._masks[g].numel() for g in masks):
            raise PruningStateError("pruning state does not match this model's groups (different model or config?)")
        self._masks = {g: m.to(torch.bool).cpu() for g, m in masks.items()}
        self._pruning_level = float(state["pruning_level"])
        self._frozen = bool(state["frozen"])
        if state.get("scheduler_disabled"):
            self.disable_scheduler()
        self._scheduler.load_state_dict(state["scheduler"])
        if state.get("ranking") is not None:
            coefficients = {int(g): (float(a), float(b)) for g, (a, b) in state["ranking"].items()}
            self.set_ranking_coefficients(RankingCoefficients(coefficients, {g: self._groups[g].size for g in coefficients}))
        self._install_masks()

    # ------------------------------------------------------------------ internals
    def _load_ranking(self, path: str) -> RankingCoefficients:
        """Read ranking coefficients: hf_prune's file, or NNCF's ``{node name: [a, b]}``.

        NNCF keeps one (a, b) per layer and sums the transformed importance of a group's layers; here
        a group has one (a, b), the mean over its layers (the same ranking when its layers agree)."""
        signature = {gid: g.size for gid, g in self._groups.items()}
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, Mapping) or "format_version" in data:
            return RankingCoefficients.load(path, signature)
        names = nncf_scopes(self.model)
        by_name = {n: m for m, ns in names.items() for n in (m, *ns)}
        per_group: dict[int, list[tuple[float, float]]] = {}
        modules = {info.module_name: info.group_id for info in self.pruned_modules}
        for key, value in data.items():
            module = by_name.get(key)
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            if module not in modules or not ok:
                raise RankingCoefficientsError(
                    f"{path}: entry {key!r}: expected a pruned layer's NNCF node name or module name mapped to [a, b]; "
                    f"got {value!r}" + ("" if module in modules else " for a layer that is not pruned"))
            per_group.setdefault(modules[module], []).append((float(value[0]), float(value[1])))
        missing = sorted(set(modules) - {by_name[k] for k in data})
        if missing:
            raise RankingCoefficientsError(f"{path}: no coefficients for pruned layer(s) {missing[:10]}")
        coefficients = {gid: (sum(a for a, _ in ab) / len(ab), sum(b for _, b in ab) / len(ab))
                        for gid, ab in sorted(per_group.items())}
        return RankingCoefficients(coefficients, signature)

    @property
    def groups(self) -> dict[int, PruningGroup]:
        return self._groups

    @property
    def levels_nonzero(self) -> bool:
        """Whether any channel is masked; recorded when the masks change, not scanned per training step."""
        return self._levels_nonzero

    @property
    def current_flops(self) -> float:
        return self.analysis.flops_model.flops(self._kept_fractions())

    @property
    def predicted_latency_ms(self) -> float | None:
        """Latency of the current plan predicted by the latency table (latency targets only)."""
        return None if self.latency is None else self.latency.cost(self._kept_fractions())

    def measure_latency(self, model: nn.Module) -> float:
        """Measure ``model`` (e.g. the stripped one) on the deployment target; milliseconds, also shown
        by :meth:`statistics`."""
        target = self.latency.target if self.latency is not None else DeployTarget.from_config(self.config.params, model)
        ms = measure_latency(model, self.analysis.example_inputs, target)
        self.measured_latency_ms = ms
        return ms

    @property
    def current_params(self) -> float:
        return self.analysis.flops_model.params(self._kept_fractions(), trainable_only=self.analysis.params)

    def group_masks(self) -> dict[int, torch.Tensor]:
        return dict(self._masks)

    def leaf_masks(self) -> dict[int, torch.Tensor]:
        return {self._groups[gid].space: m for gid, m in self._masks.items() if not bool(m.all())}

    def param_dim_mask(self, param: str, dim: int) -> torch.Tensor:
        labels = self.analysis.trace.param_labels[param]
        return self.analysis.trace.table.label_mask(labels[dim], self.leaf_masks())

    def _kept_fractions(self) -> dict[int, float]:
        return {self._groups[gid].space: int(m.sum()) / m.numel() for gid, m in self._masks.items()}  # exact, as planned

    def _validate_level(self, level: Any, key: str) -> float:
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) < 1.0:
            raise PruningLevelError(f"{key} must be a number in [0, 1), got {level!r}")
        return float(level)

    def _validate_group_levels(self, levels: Mapping[int, float]) -> dict[int, float]:
        unknown = [k for k in levels if k not in self._groups]
        if unknown:
            valid = sorted(self._groups)
            raise PruningLevelError(
                f"unknown pruning group id(s) {unknown}; prunable group ids are {valid} "
                "(see controller.analysis.groups or `hf-prune analyze`)")
        return {int(k): self._validate_level(v, f"pruning_level[{k}]") for k, v in levels.items()}

    def _cost_model(self) -> CostModel | None:
        """What a level measures beyond filters: FLOPs, predicted latency, or None (filters)."""
        if self.prune_flops:
            return FlopsCost(self.analysis.flops_model)
        return self.latency

    def _plan(self, level: float, scores: dict[int, torch.Tensor]) -> Plan:
        """Kept channels per group for a global level (of filters, FLOPs or latency): the same level in
        every group, or one global ranking (``all_weights``, LeGR); with a latency target and
        ``all_weights``, channels go where the latency table says they save most (HALP-style)."""
        cap = self.config.params.legr_params.max_pruning if self.ranking is not None else MAX_GLOBAL_GROUP_LEVEL

        def at(lv: float) -> Plan:
            return plan_for_level(self._groups, lv, scores, self.ranking, self.config.params.all_weights, cap)

        if self.latency is not None and self.config.params.all_weights and self.ranking is None:
            return plan_by_benefit(self._groups, level, self.latency, scores, "pruning_latency_target", cap)
        cost = self._cost_model()
        if cost is None:
            return at(level)
        key = "pruning_flops_target" if self.prune_flops else "pruning_latency_target"
        return plan_for_cost(self._groups, level, cost, at, key)

    def _producer_coords(self) -> dict[int, list[tuple[str, int, torch.Tensor]]]:
        T, labels = self.analysis.trace.table, self.analysis.trace.param_labels
        return {
            g.id: [(m.param, m.dim, T.label_coords(labels[m.param][m.dim], g.space)) for m in g.members if m.role == "out"]
            for g in self._groups.values()
        }

    @torch.no_grad()
    def _importance(self) -> dict[int, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {
            gid: group_importance([(params[p], d, c) for p, d, c in self._coords[gid]], g.size, self._criterion)
            for gid, g in self._groups.items()
        }

    def _apply_plan(self, keep: dict[int, int], scores: dict[int, torch.Tensor]) -> None:
        for gid, k in keep.items():
            g = self._groups[gid]
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[torch.topk(scores[gid], k).indices] = True  # keep the most important (GM: farthest from median)
            self._masks[gid] = mask
        self._install_masks()

    def _install_masks(self) -> None:
        """Consumer weight masks of every prunable group, all-ones where nothing is pruned: the same hooks
        stay installed from creation to strip and are updated in place (see :class:`.masks._MaskHook`)."""
        self.mask_version += 1
        leaf = self.leaf_masks()
        self._levels_nonzero = bool(leaf)
        T, trace = self.analysis.trace.table, self.analysis.trace
        consumer_dims: dict[str, set[int]] = {}
        for group in self._groups.values():
            for m in group.members:
                if m.role == "in":
                    consumer_dims.setdefault(m.param, set()).add(m.dim)
        masks: dict[str, torch.Tensor] = {}
        for param, dims in consumer_dims.items():
            shape = trace.param_shapes[param]
            mask = torch.ones([1] * len(shape))  # broadcast over the unmasked dims: no weight-sized copy
            for d in dims:
                view = [1] * len(shape)
                view[d] = -1
                mask = mask * T.label_mask(trace.param_labels[param][d], leaf).reshape(view).float()
            masks[param] = mask
        spaces = {g.space for g in self._groups.values()}
        self._masker.apply(self.model, masks, trace.standardized, norm_masks(T, trace.norms, leaf, spaces),
                           self._users)


def has_pruning_masks(model: nn.Module) -> bool:
    """Whether a controller's masks remove channels in ``model``'s forward pass (pruned, not stripped yet)."""
    return any(isinstance(getattr(hook, "__self__", None), _MaskHook) and hook.__self__.prunes
               for module in model.modules() for hook in module._forward_pre_hooks.values())


def pruning_policy(model: nn.Module, config: PruningConfig) -> PruningPolicy:
    """The analysis options of ``config`` for ``model``, with ``channel_multiple: auto`` resolved for the
    deployment target (``params.deploy_device`` / ``deploy_dtype``, default: the model's)."""
    policy = PruningPolicy.from_config(config)
    if config.params.channel_multiple == "auto":
        policy.channel_multiple = auto_channel_multiple(DeployTarget.from_config(config.params, model))
    return policy


def create_pruning_controller(model: nn.Module, config: PruningConfig | Mapping[str, Any] | None = None,
                              example_inputs: Any = None, data_loader: Iterable[Any] | None = None,
                              allow_nothing_prunable: bool = False) -> FilterPruningController:
    """Analyse ``model`` once and attach a :class:`FilterPruningController` to it.

    ``config``: a :class:`PruningConfig`, an NNCF-style dict, or None for NNCF's defaults.
    ``example_inputs``: a tensor, tuple or dict the model accepts (on any device, in any dtype); inferred
    from a timm ``pretrained_cfg`` or a transformers config when omitted. ``data_loader``: batches used by
    BatchNorm adaptation. The model may sit on any single device (CPU, CUDA, ...) in any dtype: the
    analysis is made on a float32 CPU copy, masks and importance live on the model's device.

    A config that asks for pruning on a model where no group is prunable raises
    :class:`NothingPrunableError` naming the blocking ops; ``allow_nothing_prunable=True`` turns that
    into a warning and a controller that leaves the model unchanged.
    """
    if config is None:
        config = PruningConfig()
    elif isinstance(config, Mapping):
        config = PruningConfig.from_dict(config)
    elif not isinstance(config, PruningConfig):
        raise TypeError(f"config must be a PruningConfig or a dict, got {type(config).__name__}")
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: masks go on the module it compiles
    remove_mask_hooks(model)  # a model has one controller: a new one replaces the previous one's masks
    analysis = analyze_model(model, example_inputs, pruning_policy(model, config))
    if config.params.channel_multiple == "auto":
        fit_units(analysis.prunable_groups)
        if config.prune_flops:
            relax_units(analysis.prunable_groups, FlopsCost(analysis.flops_model), config.target)
    if not analysis.prunable_groups and (config.target > 0 or config.pruning_init > 0):
        message = _nothing_prunable_message(model, analysis)
        if not allow_nothing_prunable:
            raise NothingPrunableError(
                f"{message}. Pass allow_nothing_prunable=True to create_pruning_controller to continue with a "
                "model that stays dense; an op reported as having no channel rule can be given one with "
                "hf_prune.register_channel_rule, or, if it is a backend variant of an ATen op, be mapped to that op "
                "with hf_prune.register_op_variant")
        warnings.warn(f"{message}; the controller will leave it unchanged", UserWarning, stacklevel=2)
    controller = FilterPruningController(model, config, analysis)
    controller.data_loader = data_loader
    if controller.groups and config.target > 0 and controller._cost_model() is None:
        _check_target_prunes(controller)
    return controller


def _check_target_prunes(controller: FilterPruningController) -> None:
    """A filter target that rounding turns into "keep every channel" is an error, not a dense "pruned" model."""
    target = controller.target_level
    plan = controller._plan(target, controller._importance())
    if any(kept < controller.groups[gid].size for gid, kept in plan.items()):
        return
    largest = max(controller.groups.values(), key=lambda g: g.size)
    raise NothingPrunableError(
        f"pruning_target {target:g} removes no channel of {type(controller.model).__name__}: every group keeps "
        f"all its channels once rounded up to its channel multiple (largest group: {largest.size} channels, "
        f"multiple {largest.unit}); raise the target or lower params.channel_multiple")


def _nothing_prunable_message(model: nn.Module, analysis: ModelAnalysis) -> str:
    """Why no group of ``model`` is prunable: unknown ops first, then the most common reasons."""
    layers = sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in model.modules())
    reasons = [why for whys in analysis.unprunable_layers.values() for why in whys]
    unknown = sorted({r for r in reasons if "no channel rule" in r})
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    common = sorted(counts, key=counts.get, reverse=True)
    shown = (unknown + [r for r in common if r not in unknown])[:5]
    what = f"{layers} conv/linear layers" if layers else "no conv/linear layer"
    return (f"{type(model).__name__} ({what}) has nothing prunable: "
            + ("; ".join(shown) if shown else "no pruning group found"))
