"""Pruning schedules with NNCF's semantics (baseline, exponential, exponential_with_bias).

With e the epoch, i = e − num_init_steps and S = pruning_steps − 1: the level is 0 while
e < num_init_steps; ``baseline`` jumps to the target; ``exponential`` keeps the density
(1 − level) on the exponential through (0, 1 − p0) and (S, 1 − pt); ``exponential_with_bias`` follows
a·exp(−k·i) + b through (0, p0), (S, pt) and (S/8, 0.75·pt). With S = 0 (``pruning_steps: 1``) the
target applies at once. Masks are recomputed from the current weights at every epoch step until the
schedule freezes them. Where NNCF 2.19 misbehaves we differ on purpose (docs/concepts.md): the level
stays at the target after S even when p0 > pt, and exponential_with_bias needs no numerical solver.
"""

from __future__ import annotations

import math
from typing import Any, Protocol


class _Controller(Protocol):
    frozen: bool

    def set_pruning_level(self, pruning_level: Any, run_batchnorm_adaptation: bool = False) -> None: ...

    def freeze(self) -> None: ...


class PruningScheduler:
    """Base scheduler: counts epochs and steps; subclasses define the level of an epoch."""

    def __init__(self, controller: _Controller, initial_level: float, target_level: float,
                 num_init_steps: int = 0, pruning_steps: int = 100) -> None:
        self._controller = controller
        self.initial_level = initial_level
        self.target_level = target_level
        self.num_init_steps = num_init_steps
        self.pruning_steps = pruning_steps
        self.current_epoch = -1
        self.current_step = -1

    @property
    def freeze_epoch(self) -> int:
        """The epoch from which the masks stay fixed."""
        return self.num_init_steps + self.pruning_steps

    @property
    def num_warmup_epochs(self) -> int:
        """NNCF's name for ``num_init_steps``."""
        return self.num_init_steps

    @property
    def num_pruning_epochs(self) -> int:
        """NNCF's name for ``pruning_steps``."""
        return self.pruning_steps

    def level_at(self, epoch: int) -> float:
        """The pruning level the schedule sets at ``epoch``."""
        if epoch < self.num_init_steps:
            return 0.0
        return self._level(epoch - self.num_init_steps)

    def _level(self, i: int) -> float:
        raise NotImplementedError

    @property
    def current_pruning_level(self) -> float:
        """The level of the current epoch (0 before the first :meth:`epoch_step`)."""
        return self.level_at(self.current_epoch) if self.current_epoch >= 0 else 0.0

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Call at the start of each epoch: moves to the next epoch and, until frozen, updates the masks."""
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch
        if not self._controller.frozen:
            self._controller.set_pruning_level(self.current_pruning_level)
        if self.current_epoch >= self.freeze_epoch:
            self._controller.freeze()

    def step(self, next_step: int | None = None) -> None:
        """Call after each optimizer step (NNCF changes levels per epoch only)."""
        self.current_step = self.current_step + 1 if next_step is None else next_step

    def state_dict(self) -> dict[str, Any]:
        return {"current_epoch": self.current_epoch, "current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current_epoch = int(state["current_epoch"])
        self.current_step = int(state["current_step"])

    get_state = state_dict
    """NNCF's name for :meth:`state_dict`."""
    load_state = load_state_dict
    """NNCF's name for :meth:`load_state_dict` (like NNCF's, it leaves the masks alone)."""


class BaselinePruningScheduler(PruningScheduler):
    """The target level right after the initial steps, frozen from then on."""

    @property
    def freeze_epoch(self) -> int:
        return self.num_init_steps

    def _level(self, i: int) -> float:
        return self.target_level


class ExponentialPruningScheduler(PruningScheduler):
    def _level(self, i: int) -> float:
        p0, pt, s = self.initial_level, self.target_level, self.pruning_steps - 1
        if s <= 0:
            return pt
        density = (1 - p0) * ((1 - pt) / (1 - p0)) ** (min(i, s) / s)
        return min(1 - density, pt)


class ExponentialWithBiasPruningScheduler(PruningScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.a, self.b, self.k = _fit_exp_with_bias(self.initial_level, self.target_level, max(self.pruning_steps - 1, 1))

    def _level(self, i: int) -> float:
        s = self.pruning_steps - 1
        if s <= 0:
            return self.target_level
        level = self.a * math.exp(-self.k * min(i, s)) + self.b
        return min(max(level, 0.0), self.target_level)


def _fit_exp_with_bias(p0: float, pt: float, s: int) -> tuple[float, float, float]:
    """a, b, k of a·exp(−k·x) + b through (0, p0), (s, pt), (s/8, 0.75·pt)."""
    if pt <= p0:
        return 0.0, pt, 0.0
    r = (pt - p0) / (0.75 * pt - p0) if 0.75 * pt != p0 else math.inf
    if not 1 < r < 8:  # the middle point is not on a decaying exponential: fall back to a straight line
        return -(pt - p0), pt, 0.0
    lo, hi = 1e-12, 1 - 1e-12  # u = exp(-k s / 8) solves 1 + u + ... + u^7 = r
    for _ in range(200):
        u = (lo + hi) / 2
        if sum(u ** j for j in range(8)) < r:
            lo = u
        else:
            hi = u
    u = (lo + hi) / 2
    k = -8 * math.log(u) / s
    a = (pt - p0) / (math.exp(-k * s) - 1)
    return a, p0 - a, k


class StubScheduler(PruningScheduler):
    """What ``disable_scheduler`` leaves: counts epochs and steps, never changes the level."""

    def __init__(self, level: float) -> None:
        super().__init__(controller=None, initial_level=level, target_level=level)  # type: ignore[arg-type]

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch

    def level_at(self, epoch: int) -> float:
        return self.target_level


SCHEDULERS: dict[str, type[PruningScheduler]] = {
    "baseline": BaselinePruningScheduler,
    "exponential": ExponentialPruningScheduler,
    "exponential_with_bias": ExponentialWithBiasPruningScheduler,
}
