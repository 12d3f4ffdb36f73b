"""Memory aware synapses (Aljundi et al. 2018): importance from the output's sensitivity.

At a task's end, Omega grows by the mean over the task's examples of |d ||f(x)||^2 / d theta|
(f restricted to the outputs the example's task may use; no labels needed). The penalty is
strength * sum_i Omega_i (theta_i - theta*_i)^2 with theta* the parameters at the last task's
end: the paper's lambda is `strength`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, example_mean, quadratic, regulariser
from continual.regularisers.registry import MethodSpec


class MASState(NamedTuple):
    strength: jax.Array  # lambda
    omega: object  # accumulated importance
    anchor: object  # parameters at the end of the last task


def output_sensitivity(objective, params, data, key, num_samples: int | None = None):
    """Mean |d ||f(x)||^2 / d theta| over the valid examples of `data`."""

    def one(x, y, mask, k):
        def norm(p):
            out = objective.apply(p, x[None])[0]
            return jnp.sum(jnp.where(mask, out, 0.0) ** 2)

        return jax.tree.map(jnp.abs, jax.grad(norm)(params))

    return example_mean(one, objective, params, data, key, num_samples)


def mas(objective, strength: float = 1.0, num_samples: int | None = None):
    """MAS regulariser; `num_samples` limits the examples its importance is estimated on."""
    check_nonnegative(strength=strength)
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return MASState(jnp.asarray(strength, jnp.float32), zeros, zeros)

    def penalty(params, state, batch, key):
        return 2.0 * state.strength * quadratic(params, state.anchor, state.omega), {}

    def consolidate(state, params, data, key):
        new = output_sensitivity(objective, params, data, key, num_samples)
        omega = jax.tree.map(jnp.add, state.omega, new)
        return state._replace(omega=omega, anchor=params)

    return regulariser("mas", init, penalty, consolidate=consolidate)


METHODS = {
    "mas": MethodSpec(
        lambda ctx, **kw: mas(ctx.objective, **kw),
        {"strength": 1.0, "num_samples": None},
        "quadratic",
    ),
}
