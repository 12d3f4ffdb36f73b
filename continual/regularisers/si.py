"""Synaptic intelligence (Zenke, Poole & Ganguli 2017): importance from the path integral.

While a task trains, every step adds -g * dtheta to a running per-parameter sum w (g: the
gradient that step used, dtheta: the update it made). At the task's end the importance grows by
w / (Delta^2 + xi), Delta being how far each parameter moved over the task, and w restarts. The
penalty is strength * sum_i Omega_i (theta_i - theta*_i)^2, anchored at the last task's end (the
paper's surrogate loss, with its c as `strength` and its damping xi as `damping`).

`observe` sees the parameters before each update, so the sum runs one step behind: the step
recorded last is closed at the next observe or at consolidation, which makes it exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, quadratic, regulariser
from continual.regularisers.registry import MethodSpec


class SIState(NamedTuple):
    strength: jax.Array  # c
    damping: jax.Array  # xi
    omega: object  # accumulated importance Omega
    w: object  # this task's running path integral
    anchor: object  # parameters at the end of the last task (start of this one)
    last_params: object  # parameters before the last observed update
    last_grads: object  # gradient of that update
    pending: jax.Array  # 1 once a step has been observed and not yet closed


def si(strength: float = 1.0, damping: float = 0.1):
    """SI regulariser: `strength` is the paper's c, `damping` its xi."""
    check_nonnegative(strength=strength, damping=damping)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SIState(
            jnp.asarray(strength, jnp.float32),
            jnp.asarray(damping, jnp.float32),
            zeros,
            zeros,
            params,
            params,
            zeros,
            jnp.zeros((), jnp.float32),
        )

    def _close(state, params):
        """Adds the last observed step's -g * dtheta now that its result `params` is known."""
        w = jax.tree.map(
            lambda w, g, p, q: w - state.pending * g * (p - q),
            state.w,
            state.last_grads,
            params,
            state.last_params,
        )
        return state._replace(w=w)

    def penalty(params, state, batch, key):
        return 2.0 * state.strength * quadratic(params, state.anchor, state.omega), {}

    def observe(state, params, grads, batch, key):
        state = _close(state, params)
        return state._replace(
            last_params=params, last_grads=grads, pending=jnp.ones_like(state.pending)
        )

    def consolidate(state, params, data, key):
        state = _close(state, params)
        omega = jax.tree.map(
            lambda o, w, p, a: o + w / ((p - a) ** 2 + state.damping),
            state.omega,
            state.w,
            params,
            state.anchor,
        )
        zeros = jax.tree.map(jnp.zeros_like, params)
        return state._replace(
            omega=omega,
            w=zeros,
            anchor=params,
            last_params=params,
            last_grads=zeros,
            pending=jnp.zeros_like(state.pending),
        )

    return regulariser("si", init, penalty, observe=observe, consolidate=consolidate)


METHODS = {
    "si": MethodSpec(lambda ctx, **kw: si(**kw), {"strength": 1.0, "damping": 0.1}, "quadratic"),
}
