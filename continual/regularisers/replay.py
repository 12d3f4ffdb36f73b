"""Experience replay: a fixed-capacity reservoir of earlier examples, replayed as a loss term.

The buffer is filled at the end of each task by reservoir sampling over that task's distinct
training examples (offered once each, in random order), so it always holds a uniform sample of
everything seen so far. Its penalty is the model's loss on a sample of the buffer, which makes
`chain(ewc(...), replay(...))` work with no special case.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, regulariser


class ReplayState(NamedTuple):
    weight: jax.Array  # how much the replay loss counts against the current task's loss
    x: jax.Array  # (capacity, ...) stored inputs
    y: jax.Array  # (capacity, ...) stored targets
    task: jax.Array  # (capacity,) the task each example came from (for its label mask)
    size: jax.Array  # filled slots
    seen: jax.Array  # distinct examples offered to the reservoir so far


def reservoir_insert(state: ReplayState, data, key) -> ReplayState:
    """Offers every valid example of `data`, in random order, to the reservoir (Algorithm R).

    Vectorised but exact: the k-th example offered overall (k = seen + its rank) takes slot k
    while the buffer fills, then a uniform slot j in [0, k] if j < capacity; when several new
    examples pick one slot, the last offered wins, as in the sequential algorithm.
    """
    capacity = state.x.shape[0]
    n = data["x"].shape[0]
    valid = data["weight"] > 0
    bits = jax.random.bits(key, (2, n))
    # A random order of the valid examples; padding (keys >= 2^31) goes last.
    order = jnp.argsort(jnp.where(valid, bits[0] >> 1, jnp.uint32(2**31)))
    offered = valid[order]
    k = state.seen + jnp.arange(n)  # overall index of each offer (valid ones come first)
    j = (bits[1] % (k + 1).astype(jnp.uint32)).astype(k.dtype)  # uniform in [0, k]
    slot = jnp.where(k < capacity, k, j)
    slot = jnp.where(offered & (slot < capacity), slot, capacity)  # capacity: no write
    winner = jnp.full((capacity + 1,), -1).at[slot].max(jnp.arange(n))[:capacity]
    src = order[jnp.maximum(winner, 0)]
    take = winner >= 0

    def write(old, new):
        mask = take.reshape((capacity,) + (1,) * (old.ndim - 1))
        return jnp.where(mask, new[src], old)

    seen = state.seen + jnp.sum(valid).astype(state.seen.dtype)
    return state._replace(
        x=write(state.x, data["x"]),
        y=write(state.y, data["y"]),
        task=write(state.task, data["task"]),
        seen=seen,
        size=jnp.minimum(seen, capacity),
    )


def replay(
    objective, capacity: int, example_x, example_y, weight: float = 1.0, batch_size: int = 0
):
    """Replay regulariser. `example_x`/`example_y` are one example's arrays (shape and dtype);
    `batch_size` 0 replays the whole buffer every step, otherwise a uniform sample of that size."""
    check_nonnegative(weight=weight)
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"replay capacity must be a positive integer, got {capacity!r}")
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"replay batch_size must be an integer >= 0, got {batch_size!r}")

    def init(params):
        return ReplayState(
            jnp.asarray(weight, jnp.float32),
            jnp.zeros((capacity, *jnp.shape(example_x)), jnp.asarray(example_x).dtype),
            jnp.zeros((capacity, *jnp.shape(example_y)), jnp.asarray(example_y).dtype),
            jnp.zeros((capacity,), jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )

    def penalty(params, state, batch, key):
        if batch_size == 0:
            idx = jnp.arange(capacity)
            w = (idx < state.size).astype(jnp.float32)
        else:
            idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
            w = jnp.broadcast_to((state.size > 0).astype(jnp.float32), (batch_size,))
        sample = {"x": state.x[idx], "y": state.y[idx], "task": state.task[idx], "weight": w}
        loss = objective.loss(params, sample)
        return state.weight * loss, {"loss": loss}

    def consolidate(state, params, data, key):
        return reservoir_insert(state, data, key)

    return regulariser("replay", init, penalty, consolidate=consolidate)
