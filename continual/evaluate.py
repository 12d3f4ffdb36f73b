"""Evaluation: the metric on every task (or on the tasks seen so far), and the continual-learning
summary of a metric matrix.

`matrix[i][j]` is the metric on task j after training task i (T x T). Definitions, for a metric
where higher is better (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):
  average     mean_j matrix[T-1][j]
  forgetting  mean over j < T-1 of max_{l in j..T-2} matrix[l][j] - matrix[T-1][j]
  bwt         mean over j < T-1 of matrix[T-1][j] - matrix[j][j]
  fwt         mean over j > 0 of matrix[j-1][j] - initial[j]   (initial: the untrained model)
For a lower-is-better metric (MSE, bits per character) forgetting, bwt and fwt are sign-flipped so
that their meaning stays: forgetting > 0 is knowledge lost, bwt < 0 is old tasks getting worse,
fwt > 0 is a head start on tasks not yet trained.

A missing entry (a task not evaluated, e.g. not yet seen with `train.evaluate = "seen"`) is NaN;
a summary that needs one is None.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from continual.losses import Objective
from continual.types import TaskData


def evaluate_tasks(objective, params, data: TaskData, upto=None, batch_size: int = 0) -> jax.Array:
    """The metric on every task's split: shape (T,), or (T, R) for a tuple of R objectives.

    A tuple of objectives that share one model (`apply`) and differ in their metric or label
    masks (a metric and its second reading, task-aware beside task-agnostic accuracy) is read
    from one forward pass per task: one column per objective.

    With `upto` (a traced int), only tasks 0..upto, and the evaluation-only tasks
    (`data.eval_only`), are evaluated and the others are NaN: each task is a `lax.cond`, so a
    skipped task costs nothing and `upto` is a value, not a shape (one compiled program serves
    every row; upto = -1 evaluates the evaluation-only tasks alone).

    `batch_size` > 0 reads each task in blocks of that many examples, and a block that holds
    only padding (past the task's own examples) costs nothing: a task smaller than the largest
    costs its own size, and the model's outputs are held for one block at a time. The value is
    the same weighted mean, summed in another order. 0: each task at once.
    """
    several = not isinstance(objective, Objective)  # (an Objective is a NamedTuple)
    objectives = objective if several else (objective,)
    size = data.ref.shape[1]

    def whole(task):
        batch = data.task_batch(task)
        out = objectives[0].apply(params, batch["x"])
        return jnp.stack([o.metric_of(out, batch) for o in objectives])

    def blocks(task):
        def block(start):
            batch = data.block(task, start, batch_size)
            out = objectives[0].apply(params, batch["x"])
            w = batch["weight"]
            sums = [jnp.sum(o.metric_values(out, batch) * w) for o in objectives]
            return jnp.stack([*sums, jnp.sum(w)])

        def due(start):
            empty = jnp.zeros(len(objectives) + 1, jnp.float32)
            return jax.lax.cond(start < data.n[task], block, lambda _: empty, start)

        starts = jnp.arange(0, size, batch_size)
        total = jax.lax.map(due, starts).sum(axis=0)
        return total[:-1] * (1.0 / jnp.maximum(total[-1], 1e-12))  # as weighted_mean

    def one(task):
        values = blocks(task) if 0 < batch_size < size else whole(task)
        return values if several else values[0]

    tasks = jnp.arange(data.num_rows)
    if upto is None:
        return jax.lax.map(one, tasks)
    shape = jax.eval_shape(one, tasks[0])

    def seen(task):
        due = task <= upto
        if data.eval_only is not None:
            due = due | data.eval_only[task]
        return jax.lax.cond(due, one, lambda _: jnp.full(shape.shape, jnp.nan, shape.dtype), task)

    return jax.lax.map(seen, tasks)


def summarize(matrix, initial=None, higher_is_better: bool = True) -> dict[str, float | None]:
    """Average, forgetting, BWT and FWT of a T x T matrix (None where undefined, e.g. T = 1).

    A matrix with fewer rows than columns (the joint baseline's single row) gets only `average`.
    Average, forgetting and BWT read only the lower triangle (diagonal included); FWT reads the
    entries above the diagonal and `initial`, and is None when any of them is missing (NaN).
    """
    m = np.asarray(matrix, np.float64)
    rows, cols = m.shape
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, float | None] = {
        "average": float(m[-1].mean()),
        "forgetting": None,
        "bwt": None,
        "fwt": None,
    }
    if rows != cols or cols < 2:
        return out
    t = cols
    best = np.array([(m[j : t - 1, j] * sign).max() for j in range(t - 1)])
    out["forgetting"] = float(np.mean(best - sign * m[t - 1, : t - 1]))
    out["bwt"] = float(sign * np.mean(m[t - 1, : t - 1] - np.diag(m)[: t - 1]))
    if initial is not None:
        init = np.asarray(initial, np.float64)
        ahead = np.array([m[j - 1, j] - init[j] for j in range(1, t)])
        if not np.isnan(ahead).any():  # missing when the tasks ahead were not evaluated
            out["fwt"] = float(sign * np.mean(ahead))
    return out
