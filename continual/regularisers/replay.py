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
    """Offers every valid example of `data` (in random order) to the reservoir (Algorithm R)."""
    capacity = state.x.shape[0]
    n = data["x"].shape[0]
    order_key, slot_key = jax.random.split(key)
    order = jax.random.permutation(order_key, n)

    def offer(carry, i):
        buf, seen = carry
        idx = order[i]
        valid = data["weight"][idx] > 0
        j = jax.random.randint(jax.random.fold_in(slot_key, i), (), 0, seen + 1)
        slot = jnp.where(seen < capacity, seen, j)
        write = valid & (slot < capacity)
        slot = jnp.where(write, slot, 0)
        buf = jax.tree.map(
            lambda b, new: b.at[slot].set(jnp.where(write, new, b[slot])),
            buf,
            (data["x"][idx], data["y"][idx], data["task"][idx]),
        )
        return (buf, seen + valid.astype(seen.dtype)), None

    (buf, seen), _ = jax.lax.scan(
        offer, ((state.x, state.y, state.task), state.seen), jnp.arange(n)
    )
    x, y, task = buf
    return state._replace(x=x, y=y, task=task, seen=seen, size=jnp.minimum(seen, capacity))


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
