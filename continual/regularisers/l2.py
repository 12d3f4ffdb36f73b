"""L2 to the anchor: an equal quadratic pull on every parameter towards the last solution."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, quadratic, regulariser
from continual.regularisers.registry import MethodSpec


class L2State(NamedTuple):
    strength: jax.Array  # lambda
    anchor: object  # params after the last consolidated task
    active: jax.Array  # 0 before the first consolidation, 1 after


def l2(strength: float = 1.0):
    """Penalty strength/2 * ||theta - theta*||^2 once a task has been consolidated."""
    check_nonnegative(strength=strength)

    def init(params):
        return L2State(
            jnp.asarray(strength, jnp.float32),
            jax.tree.map(jnp.zeros_like, params),
            jnp.zeros((), jnp.float32),
        )

    def penalty(params, state, batch, key):
        ones = jax.tree.map(lambda p: state.active * jnp.ones_like(p), params)
        return state.strength * quadratic(params, state.anchor, ones), {}

    def consolidate(state, params, data, key):
        return state._replace(anchor=params, active=jnp.ones_like(state.active))

    return regulariser("l2", init, penalty, consolidate=consolidate)


METHODS = {
    "l2": MethodSpec(lambda ctx, **kw: l2(**kw), {"strength": 1.0}, "quadratic"),
}
