"""Evaluation: the metric on every task, and the continual-learning summary of a metric matrix.

`matrix[i][j]` is the metric on task j after training task i (T x T). Definitions, for a metric
where higher is better (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):
  average     mean_j matrix[T-1][j]
  forgetting  mean over j < T-1 of max_{l in j..T-2} matrix[l][j] - matrix[T-1][j]
  bwt         mean over j < T-1 of matrix[T-1][j] - matrix[j][j]
  fwt         mean over j > 0 of matrix[j-1][j] - initial[j]   (initial: the untrained model)
For a lower-is-better metric (MSE, bits per character) forgetting, bwt and fwt are sign-flipped so
that their meaning stays: forgetting > 0 is knowledge lost, bwt < 0 is old tasks getting worse,
fwt > 0 is a head start on tasks not yet trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from continual.types import TaskData


def evaluate_tasks(objective, params, data: TaskData) -> jax.Array:
    """The metric on every task's split: shape (T,)."""

    def one(task):
        return objective.metric(params, data.task_batch(task))

    return jax.lax.map(one, jnp.arange(data.num_rows))


def summarize(matrix, initial=None, higher_is_better: bool = True) -> dict[str, float | None]:
    """Average, forgetting, BWT and FWT of a T x T matrix (None where undefined, e.g. T = 1).

    A matrix with fewer rows than columns (the joint baseline's single row) gets only `average`.
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
        out["fwt"] = float(sign * np.mean([m[j - 1, j] - init[j] for j in range(1, t)]))
    return out
