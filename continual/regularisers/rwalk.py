"""RWalk (Chaudhry et al. 2018, Riemannian Walk): a running Fisher plus an SI-like path score.

Every step the Fisher is a moving average of the squared minibatch gradient,
F <- decay * F + (1 - decay) * g^2 (their online empirical Fisher), and the step's change of the
loss is credited to each parameter in proportion to how far it moved in the Fisher's metric:
s_w += -g * dtheta / (0.5 * F * dtheta^2 + damping) (their KL-normalised path integral). At a
task's end the task's score is averaged with the scores so far (s <- (s + s_w) / 2), and the
penalty is strength * sum (F + max(s, 0)) (theta - theta*)^2, anchored at the task's end with the
Fisher of that moment. The score is clamped at zero so that the penalty stays a quadratic bowl
(a negative score, a parameter whose moves raised the loss, would reward moving away).

`observe` sees the parameters before each update, so, as in SI, the step recorded last is closed
at the next observe or at consolidation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, quadratic, regulariser
from continual.regularisers.registry import MethodSpec


class RWalkState(NamedTuple):
    strength: jax.Array  # lambda
    decay: jax.Array  # the Fisher's moving-average factor
    damping: jax.Array  # epsilon of the score's denominator
    fisher: object  # running Fisher
    importance: object  # F + max(s, 0) at the last consolidation
    score: object  # averaged score of the tasks so far
    w: object  # this task's running score
    anchor: object  # parameters at the end of the last task
    last_params: object  # parameters before the last observed update
    last_grads: object  # gradient of that update
    pending: jax.Array  # 1 once a step has been observed and not yet closed


def rwalk(strength: float = 1.0, decay: float = 0.9, damping: float = 1e-3):
    """RWalk regulariser: penalty strength * sum (F + max(s, 0)) (theta - theta*)^2, with the
    Fisher a moving average (factor `decay`) and `damping` in the score's denominator."""
    check_nonnegative(strength=strength, decay=decay, damping=damping)
    if not decay <= 1:
        raise ValueError(f"decay must be <= 1, got {decay}")

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        scalar = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return RWalkState(
            scalar(strength),
            scalar(decay),
            scalar(damping),
            zeros,
            zeros,
            zeros,
            zeros,
            params,
            params,
            zeros,
            jnp.zeros((), jnp.float32),
        )

    def _close(state, params):
        """Credits the last observed step, now that its result `params` is known."""

        def credit(w, g, f, p, q):
            moved = p - q
            return w - state.pending * g * moved / (0.5 * f * moved**2 + state.damping)

        w = jax.tree.map(credit, state.w, state.last_grads, state.fisher, params, state.last_params)
        return state._replace(w=w)

    def penalty(params, state, batch, key):
        return 2.0 * state.strength * quadratic(params, state.anchor, state.importance), {}

    def observe(state, params, grads, batch, key):
        state = _close(state, params)
        d = state.decay
        fisher = jax.tree.map(lambda f, g: d * f + (1 - d) * g**2, state.fisher, grads)
        return state._replace(
            fisher=fisher,
            last_params=params,
            last_grads=grads,
            pending=jnp.ones_like(state.pending),
        )

    def consolidate(state, params, data, key):
        state = _close(state, params)
        score = jax.tree.map(lambda s, w: 0.5 * (s + w), state.score, state.w)
        importance = jax.tree.map(lambda f, s: f + jnp.maximum(s, 0.0), state.fisher, score)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return state._replace(
            importance=importance,
            score=score,
            w=zeros,
            anchor=params,
            last_params=params,
            last_grads=zeros,
            pending=jnp.zeros_like(state.pending),
        )

    return regulariser("rwalk", init, penalty, observe=observe, consolidate=consolidate)


METHODS = {
    "rwalk": MethodSpec(
        lambda ctx, **kw: rwalk(**kw),
        {"strength": 1.0, "decay": 0.9, "damping": 1e-3},
        "quadratic",
    ),
}
