"""Interlayer ranking: how filters of different groups compare; LeGR learns it.

With ``unweighted_ranking`` (NNCF's default) each group is pruned to the same level (or, with
``all_weights``, one threshold applies to importance normalized within each group). With
``learned_ranking`` (LeGR, Chin et al. 2020) every group g gets an affine transform (a_g, b_g) of its
normalized filter importance, and one global threshold prunes the filters of lowest transformed
importance across the model. The coefficients are found by regularized evolution: a candidate is
mutated from the best of a random sample of the population, scored by pruning to the target, briefly
fine-tuning and validating, and replaces the oldest member of the population.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from tqdm.auto import tqdm

from ..distributed import broadcast_from_main, is_main_process
from ..errors import HfPruneError, MissingFileError
from ..files import write_text_atomic

if TYPE_CHECKING:
    from ..config import LegrParams
    from .controller import FilterPruningController

COEFFS_FORMAT_VERSION = 1


class RankingCoefficientsError(HfPruneError, ValueError):
    """A ranking-coefficients file is malformed or belongs to another model."""


@dataclass
class RankingCoefficients:
    """Per-group (a, b) of LeGR's transformed importance a·x + b, tied to the groups they were learned on."""

    coefficients: dict[int, tuple[float, float]]
    signature: dict[int, int]  # group id -> channels: what a file must match to be loaded

    @classmethod
    def identity(cls, signature: dict[int, int]) -> "RankingCoefficients":
        return cls({gid: (1.0, 0.0) for gid in signature}, dict(signature))

    def transform(self, gid: int, scores: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients[gid]
        return a * scores + b

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": COEFFS_FORMAT_VERSION,
            "groups": {str(g): {"channels": self.signature[g], "a": a, "b": b} for g, (a, b) in self.coefficients.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike[str], signature: dict[int, int]) -> "RankingCoefficients":
        """Read a coefficients file and check it matches the groups of the model it is loaded for."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ranking coefficients file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            version = data["format_version"]
            groups = {int(g): (int(v["channels"]), float(v["a"]), float(v["b"])) for g, v in data["groups"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RankingCoefficientsError(
                f"{path}: malformed ranking coefficients ({type(e).__name__}: {e}); expected "
                '{"format_version": 1, "groups": {"<group id>": {"channels": n, "a": float, "b": float}}}') from e
        if version != COEFFS_FORMAT_VERSION:
            raise RankingCoefficientsError(f"{path}: unknown format_version {version!r} (expected {COEFFS_FORMAT_VERSION})")
        found = {g: n for g, (n, _, _) in groups.items()}
        if found != signature:
            missing = sorted(set(signature) - set(found))
            extra = sorted(set(found) - set(signature))
            sizes = [g for g in set(found) & set(signature) if found[g] != signature[g]]
            raise RankingCoefficientsError(
                f"{path}: the coefficients were learned for a different model or config "
                f"(groups missing: {missing[:10]}, unexpected: {extra[:10]}, different widths: {sorted(sizes)[:10]})")
        if not all(math.isfinite(a) and math.isfinite(b) for _, a, b in groups.values()):
            raise RankingCoefficientsError(f"{path}: coefficients must be finite numbers")
        return cls({g: (a, b) for g, (_, a, b) in groups.items()}, dict(signature))


TrainFn = Callable[[torch.nn.Module, int], None]
"""Fine-tunes the (masked) model for the given number of steps."""
RewardFn = Callable[[torch.nn.Module], float]
"""Scores the model; higher is better (e.g. accuracy, or minus the validation loss)."""


def _mutate(parent: RankingCoefficients, rng: random.Random, params: "LegrParams") -> RankingCoefficients:
    child = dict(parent.coefficients)
    gids = list(child)
    n = max(1, round(params.mutate_percent * len(gids)))
    for gid in rng.sample(gids, min(n, len(gids))):
        a, b = child[gid]
        child[gid] = (a * math.exp(rng.gauss(0.0, params.scale_sigma)), b + rng.gauss(0.0, params.scale_sigma))
    return RankingCoefficients(child, dict(parent.signature))


def learn_ranking_coefficients(
    controller: "FilterPruningController", train_fn: TrainFn, reward_fn: RewardFn, params: "LegrParams",
    target: float | None = None, show_progress: bool = True,
) -> RankingCoefficients:
    """Search LeGR coefficients for ``controller``'s model by regularized evolution.

    Each candidate prunes the model to ``target`` (default: the controller's target) with global
    ranking, is fine-tuned ``params.train_steps`` steps by ``train_fn`` and scored by ``reward_fn``;
    the model's weights are restored after every candidate. Under ``torch.distributed`` rank 0
    searches and the result is broadcast. Reproducible for a given ``params.random_seed`` when
    ``train_fn`` and ``reward_fn`` are deterministic.
    """
    best: RankingCoefficients | None = None
    if is_main_process():
        best = _evolve(controller, train_fn, reward_fn, params, controller.target_level if target is None else target,
                       show_progress)
    best = broadcast_from_main(best)
    assert best is not None
    return best


def _evolve(controller: "FilterPruningController", train_fn: TrainFn, reward_fn: RewardFn, params: "LegrParams",
            target: float, show_progress: bool) -> RankingCoefficients:
    model = controller.model
    weights = copy.deepcopy(model.state_dict())
    saved_state = controller.state_dict()
    saved_ranking = controller.ranking
    rng = random.Random(params.random_seed)
    torch_state = torch.random.get_rng_state()

    def score(candidate: RankingCoefficients) -> float:
        controller.set_ranking_coefficients(candidate)
        controller.set_pruning_level(target)
        train_fn(model, params.train_steps)
        reward = float(reward_fn(model))
        model.load_state_dict(weights)
        return reward

    population: deque[tuple[RankingCoefficients, float]] = deque()
    start = RankingCoefficients.identity({gid: g.size for gid, g in controller.groups.items()})
    try:
        torch.manual_seed(params.random_seed)
        population.append((start, score(start)))
        best = population[0]
        for _ in tqdm(range(params.generations), desc="LeGR search", disable=not show_progress):
            sample = rng.sample(list(population), min(params.num_samples, len(population)))
            parent = max(sample, key=lambda c: c[1])[0]
            child = _mutate(parent, rng, params)
            entry = (child, score(child))
            population.append(entry)
            if len(population) > params.population_size:
                population.popleft()
            if entry[1] > best[1]:
                best = entry
    finally:
        model.load_state_dict(weights)
        controller.ranking = saved_ranking
        controller.load_state_dict(saved_state)
        torch.random.set_rng_state(torch_state)
    return best[0]
