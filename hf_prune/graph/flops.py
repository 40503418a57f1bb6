"""FLOPs and parameter counts of a model under given masks, simulated from one traced pass.

Dense FLOPs of every conv/matmul/attention op come from ``torch.utils.flop_counter``'s formulas at
trace time; a pruned model's FLOPs follow by scaling each op with the kept fraction of the channel
spaces it is linear in. No forward pass is needed, so a FLOPs-target search costs milliseconds.
"""

from __future__ import annotations

import math

from .trace import ModelTrace


class FlopsModel:
    def __init__(self, trace: ModelTrace) -> None:
        self.trace = trace
        self.dense_flops = float(sum(op.flops for op in trace.flop_ops))
        self.dense_params = float(sum(math.prod(s) for s in trace.param_shapes.values()))

        self._ops_by_leaf: dict[int, list[int]] = {}
        T = trace.table
        for i, op in enumerate(trace.flop_ops):
            for leaf in {leaf for lab in op.labels for leaf in T.leaves(lab)}:
                self._ops_by_leaf.setdefault(leaf, []).append(i)

    def op_flops(self, i: int, kept: dict[int, float]) -> float:
        op = self.trace.flop_ops[i]
        f = float(op.flops)
        for lab in op.labels:
            f *= self.trace.table.fraction(lab, kept)
        return f

    def flops(self, kept: dict[int, float] | None = None) -> float:
        """Model FLOPs when each leaf space keeps the given fraction (absent leaves: all kept)."""
        if not kept:
            return self.dense_flops
        return sum(self.op_flops(i, kept) for i in range(len(self.trace.flop_ops)))

    def tracker(self, kept: dict[int, float]) -> "FlopsTracker":
        return FlopsTracker(self, kept)

    def params(self, kept: dict[int, float] | None = None, trainable_only: set[str] | None = None) -> float:
        """Number of parameter (and buffer) elements under the given kept fractions."""
        T = self.trace.table
        total = 0.0
        for name, shape in self.trace.param_shapes.items():
            if trainable_only is not None and name not in trainable_only:
                continue
            n = float(math.prod(shape))
            if kept:
                for lab in self.trace.param_labels[name]:
                    n *= T.fraction(lab, kept)
            total += n
        return total


class FlopsTracker:
    """Model FLOPs under changing kept fractions, re-evaluating only the ops a change touches."""

    def __init__(self, model: FlopsModel, kept: dict[int, float]) -> None:
        self.model = model
        self.kept = dict(kept)
        self.per_op = [model.op_flops(i, self.kept) for i in range(len(model.trace.flop_ops))]
        self.total = sum(self.per_op)

    def total_if(self, leaf: int, fraction: float) -> float:
        """Total FLOPs if ``leaf`` kept ``fraction`` (nothing is changed)."""
        trial = {**self.kept, leaf: fraction}
        ops = self.model._ops_by_leaf.get(leaf, [])
        return self.total + sum(self.model.op_flops(i, trial) - self.per_op[i] for i in ops)

    def set(self, leaf: int, fraction: float) -> None:
        self.kept[leaf] = fraction
        for i in self.model._ops_by_leaf.get(leaf, []):
            new = self.model.op_flops(i, self.kept)
            self.total += new - self.per_op[i]
            self.per_op[i] = new
