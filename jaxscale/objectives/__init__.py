"""Objective registry: what the train step optimises, by name (`config.objective`).

An objective is built once from the run config, `OBJECTIVES.get(name)(config)`, and returns
`sums(model, batch, *, train, rng) -> dict` of summed quantities over the batch: at least
`loss_sum` and `weight_sum` (the loss is their ratio over the whole global batch), plus whatever
the objective measures (`top1_sum`, `confusion`, ...), and optionally `per_example` (each row's
`loss_sum` and `weight_sum`, [B], from which eval computes the loss's standard error). Sums
rather than means, so micro-batches, devices and eval batches add up exactly. `rng` is a per-step key (masking, dropout); the step
stays one pure function whichever objective it runs.

'' (the default) takes the dataset's task: 'lm' or 'classification'.
"""

from jaxscale.objectives.registry import OBJECTIVES, make, name_for
# Importing the modules registers their objectives.
from jaxscale.objectives import classification, lm, mlm  # noqa: E402,F401

__all__ = ['OBJECTIVES', 'make', 'name_for']
