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

    def flops(self, kept: dict[int, float] | None = None) -> float:
        """Model FLOPs when each leaf space keeps the given fraction (absent leaves: all kept)."""
        if not kept:
            return self.dense_flops
        T = self.trace.table
        total = 0.0
        for op in self.trace.flop_ops:
            f = float(op.flops)
            for lab in op.labels:
                f *= T.fraction(lab, kept)
            total += f
        return total

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
