"""Elastic weight consolidation (Kirkpatrick et al. 2017) with a diagonal Fisher.

Fisher estimators (per example, averaged over the task's examples):
  exact      E_{y ~ p(y|x)} [(d log p(y|x))^2], the expectation taken in closed form over the
             model's own predictive distribution (every class for a categorical output).
  empirical  (d log p(y_true|x))^2 at the true label.
  sampled    (d log p(y~|x))^2 for one label sampled from the model.
Modes:
  separate   one quadratic penalty per past task, in preallocated slots (shapes never change);
  online     one running Fisher F <- gamma F + F_task and the latest anchor (Schwarz et al. 2018).
The penalty is strength/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2; with the per-example mean
Fisher and a mean training loss, strength 1 weighs an old task as much as the current one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import (
    check_nonnegative,
    example_mean,
    quadratic,
    regulariser,
    subset,
)
from continual.regularisers.dense_fisher import dense_fisher, dense_layers
from continual.regularisers.registry import MethodSpec

ESTIMATORS = ("exact", "empirical", "sampled")
MODES = ("separate", "online")


class EWCState(NamedTuple):
    strength: jax.Array  # lambda
    gamma: jax.Array  # online decay of the old Fisher (unused in separate mode)
    fisher: object  # online: params-shaped; separate: (slots, *shape) per leaf
    anchor: object  # same layout as fisher
    count: jax.Array  # tasks consolidated so far


def fisher_diagonal(
    objective, params, data, key, estimator: str = "exact", num_samples: int | None = None
):
    """Diagonal Fisher of `objective` at `params`, averaged over the valid examples of `data`
    (or over a random subset of `num_samples` of them)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}")
    lik = objective.likelihood
    if estimator == "exact":
        paths = dense_layers(objective.apply, params, data["x"][:1])
        if paths is not None:  # a network of Dense layers: no per-example gradients needed
            pick_key, _ = jax.random.split(key)
            data = subset(data, pick_key, num_samples)
            total = dense_fisher(objective, params, data, paths)
            count = jnp.maximum(jnp.sum(data["weight"]), 1e-12)
            return jax.tree.map(lambda t: t / count, total)

    def example_fisher(x, y, mask, k):
        def out_fn(p):
            return objective.apply(p, x[None])[0]

        if estimator == "exact":

            def scores(p):
                return lik.scores(out_fn(p), mask)

            jac, w_K = jax.jacrev(scores, has_aux=True)(params)
            return jax.tree.map(lambda j: jnp.tensordot(w_K, j**2, axes=1), jac)
        if estimator == "sampled":
            y = lik.sample(k, jax.lax.stop_gradient(out_fn(params)), y, mask)
        g = jax.grad(lambda p: lik.nll(out_fn(p), y, mask))(params)
        n = 1.0 if lik.positions is None else lik.positions(y)  # a mean over n positions
        return jax.tree.map(lambda gi: n * gi**2, g)

    num_scores = objective.label_masks.shape[-1] if estimator == "exact" else 1
    return example_mean(example_fisher, objective, params, data, key, num_samples, num_scores)


def ewc(
    objective,
    strength: float = 1.0,
    estimator: str = "exact",
    mode: str = "separate",
    gamma: float = 1.0,
    num_tasks: int = 1,
    num_samples: int | None = None,
):
    """EWC regulariser; `num_tasks` sizes the separate-mode slots (one per task of the stream)."""
    check_nonnegative(strength=strength, gamma=gamma)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}")
    if mode not in MODES:
        raise ValueError(f"unknown EWC mode {mode!r}; choose one of {MODES}")
    if estimator == "exact" and objective.likelihood.name == "answers":
        raise ValueError(
            "the exact Fisher would cover every position, not only the answers the loss reads: "
            "use estimator 'sampled' or 'empirical' for answers"
        )
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
    slots = num_tasks if mode == "separate" else None

    def init(params):
        def zeros(p):
            return jnp.zeros(p.shape if slots is None else (slots, *p.shape), p.dtype)

        return EWCState(
            jnp.asarray(strength, jnp.float32),
            jnp.asarray(gamma, jnp.float32),
            jax.tree.map(zeros, params),
            jax.tree.map(zeros, params),
            jnp.zeros((), jnp.int32),
        )

    def penalty(params, state, batch, key):
        if slots is None:
            return state.strength * quadratic(params, state.anchor, state.fisher), {}
        per_slot = jax.vmap(quadratic, in_axes=(None, 0, 0))(params, state.anchor, state.fisher)
        return state.strength * jnp.sum(per_slot), {}

    def consolidate(state, params, data, key):
        fisher = fisher_diagonal(objective, params, data, key, estimator, num_samples)
        if slots is None:
            new_fisher = jax.tree.map(lambda old, f: state.gamma * old + f, state.fisher, fisher)
            return state._replace(fisher=new_fisher, anchor=params, count=state.count + 1)
        slot = jnp.minimum(state.count, slots - 1)

        def put(stack, value):
            return jax.lax.dynamic_update_index_in_dim(stack, value, slot, 0)

        return state._replace(
            fisher=jax.tree.map(put, state.fisher, fisher),
            anchor=jax.tree.map(put, state.anchor, params),
            count=state.count + 1,
        )

    return regulariser("ewc", init, penalty, consolidate=consolidate)


METHODS = {
    "ewc": MethodSpec(
        lambda ctx, **kw: ewc(ctx.objective, num_tasks=ctx.num_tasks, **kw),
        {
            "strength": 1.0,
            "estimator": "exact",
            "mode": "separate",
            "gamma": 1.0,
            "num_samples": None,
        },
        "quadratic",
    ),
}
