"""Experience replay: a fixed-capacity memory of earlier examples, replayed as a loss term.

The memory is filled at the end of each task by one of two selection rules:
  reservoir       reservoir sampling over the task's distinct training examples (offered once
                  each, in random order), so it always holds a uniform sample of everything seen;
  class_balanced  `per_class` slots for every (task, class) group of the stream, filled with a
                  uniform random choice of that group's examples (van de Ven et al. 2022 keep 100
                  per class). The groups are known when the regulariser is built.
Its penalty is the model's loss on a sample of the filled slots, which makes
`chain(ewc(...), replay(...))` work with no special case. A-GEM and DER reuse the memory.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual.regularisers.base import check_nonnegative, regulariser, trained_as
from continual.regularisers.registry import MethodSpec

SELECTIONS = ("reservoir", "class_balanced")


class Buffer(NamedTuple):
    """A fixed-capacity memory: rows (a dict of (capacity, ...) arrays) and which slots hold one."""

    rows: dict  # {"x", "y", "task", ...}: (capacity, ...) each
    filled: jax.Array  # (capacity,) bool
    seen: jax.Array  # valid examples offered to the memory so far


class ReplayState(NamedTuple):
    weight: jax.Array  # how much the replay loss counts against the current task's loss
    memory: Buffer
    tasks: jax.Array  # tasks consolidated so far (for scale_by_tasks)


def empty_buffer(capacity: int, example: dict) -> Buffer:
    """An empty memory of `capacity` rows shaped like the arrays of one `example`."""
    rows = {
        k: jnp.zeros((capacity, *jnp.shape(v)), jnp.asarray(v).dtype) for k, v in example.items()
    }
    return Buffer(rows, jnp.zeros((capacity,), bool), jnp.zeros((), jnp.int32))


def _write(buffer: Buffer, data, src, take) -> dict:
    """Rows where `take`: buffer slot i gets example src[i] of `data`; other slots stay."""

    def put(old, new):
        mask = take.reshape(take.shape + (1,) * (old.ndim - 1))
        return jnp.where(mask, new[src], old)

    return {k: put(v, data[k]) for k, v in buffer.rows.items()}


def reservoir_insert(buffer: Buffer, data, key) -> Buffer:
    """Offers every valid example of `data`, in random order, to the reservoir (Algorithm R).

    Vectorised but exact: the k-th example offered overall (k = seen + its rank) takes slot k
    while the buffer fills, then a uniform slot j in [0, k] if j < capacity; when several new
    examples pick one slot, the last offered wins, as in the sequential algorithm.
    """
    capacity = buffer.filled.shape[0]
    n = data["weight"].shape[0]
    valid = data["weight"] > 0
    bits = jax.random.bits(key, (2, n))
    # A random order of the valid examples; padding (keys >= 2^31) goes last.
    order = jnp.argsort(jnp.where(valid, bits[0] >> 1, jnp.uint32(2**31)))
    offered = valid[order]
    k = buffer.seen + jnp.arange(n)  # overall index of each offer (valid ones come first)
    j = (bits[1] % (k + 1).astype(jnp.uint32)).astype(k.dtype)  # uniform in [0, k]
    slot = jnp.where(k < capacity, k, j)
    slot = jnp.where(offered & (slot < capacity), slot, capacity)  # capacity: no write
    winner = jnp.full((capacity + 1,), -1).at[slot].max(jnp.arange(n))[:capacity]
    seen = buffer.seen + jnp.sum(valid).astype(buffer.seen.dtype)
    return Buffer(
        _write(buffer, data, order[jnp.maximum(winner, 0)], winner >= 0),
        jnp.arange(capacity) < seen,
        seen,
    )


def class_balanced_insert(buffer: Buffer, data, key, groups, per_class: int) -> Buffer:
    """Fills the slots of every (task, class) group present in `data` with a uniform random
    choice of up to `per_class` of its valid examples; group g owns slots [g, g+1) * per_class."""
    groups = jnp.asarray(groups, jnp.int32)  # (G, 2): (task, class)
    n, num_groups = data["weight"].shape[0], groups.shape[0]
    match_NxG = (data["task"][:, None] == groups[None, :, 0]) & (
        data["y"][:, None] == groups[None, :, 1]
    )
    valid = (data["weight"] > 0) & match_NxG.any(axis=1)
    gid = jnp.where(valid, jnp.argmax(match_NxG, axis=1), num_groups)  # unmatched sort last
    order = jnp.lexsort((jax.random.uniform(key, (n,)), gid))  # by group, random within one
    sorted_gid = gid[order]
    ids = jnp.arange(num_groups)
    start = jnp.searchsorted(sorted_gid, ids, side="left")
    count = jnp.searchsorted(sorted_gid, ids, side="right") - start
    rank = jnp.tile(jnp.arange(per_class), num_groups)  # slot -> (group, rank within it)
    slot_group = jnp.repeat(ids, per_class)
    take = rank < count[slot_group]
    src = order[jnp.minimum(start[slot_group] + rank, n - 1)]
    return Buffer(
        _write(buffer, data, src, take),
        buffer.filled | take,
        buffer.seen + jnp.sum(data["weight"] > 0).astype(buffer.seen.dtype),
    )


def sample_buffer(buffer: Buffer, key, batch_size: int) -> dict:
    """A batch of the memory's rows plus "weight": every slot (empty ones weigh 0) when
    `batch_size` is 0, else `batch_size` filled slots drawn uniformly with replacement (all
    weighing 0 while the memory is empty)."""
    if batch_size == 0:
        return {**buffer.rows, "weight": buffer.filled.astype(jnp.float32)}
    count = jnp.sum(buffer.filled)
    filled_first = jnp.argsort(jnp.logical_not(buffer.filled).astype(jnp.int32), stable=True)
    idx = filled_first[jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))]
    weight = jnp.broadcast_to((count > 0).astype(jnp.float32), (batch_size,))
    return {**{k: v[idx] for k, v in buffer.rows.items()}, "weight": weight}


class Memory(NamedTuple):
    """An episodic memory's static choices: how to make it empty and how to fill it."""

    init: object  # () -> Buffer
    insert: object  # (buffer, data, key) -> buffer, at the end of a task


def episodic_memory(
    capacity: int, example_x, example_y, selection="reservoir", per_class=None, groups=None
) -> Memory:
    """A memory of {"x", "y", "task"} rows, validated. class_balanced needs `groups`, the
    (task, class) pairs of the stream, and keeps `per_class` slots for each (default: capacity
    // number of groups; at most capacity in all)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    example = {"x": example_x, "y": example_y, "task": np.int32(0)}
    if selection == "reservoir":
        if per_class is not None:
            raise ValueError("per_class applies only to selection='class_balanced'")
        return Memory(lambda: empty_buffer(capacity, example), reservoir_insert)
    if np.ndim(example_y) != 0 or not np.issubdtype(np.asarray(example_y).dtype, np.integer):
        raise ValueError("selection='class_balanced' needs integer class labels")
    groups = np.asarray(groups if groups is not None else [], np.int32).reshape(-1, 2)
    if len(groups) == 0:
        raise ValueError("selection='class_balanced' needs the stream's (task, class) groups")
    if per_class is None:
        per_class = capacity // len(groups)
        if per_class < 1:
            raise ValueError(f"capacity {capacity} is less than one per group ({len(groups)})")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if per_class * len(groups) > capacity:
        raise ValueError(
            f"per_class {per_class} x {len(groups)} groups exceeds capacity {capacity}"
        )

    def insert(buffer, data, key):
        return class_balanced_insert(buffer, data, key, groups, per_class)

    return Memory(lambda: empty_buffer(per_class * len(groups), example), insert)


def replay(
    objective,
    capacity: int,
    example_x,
    example_y,
    weight: float = 1.0,
    batch_size: int = 0,
    selection: str = "reservoir",
    per_class: int | None = None,
    groups=None,
    scale_by_tasks: bool = False,
):
    """Replay regulariser. `example_x`/`example_y` are one example's arrays (shape and dtype);
    `batch_size` 0 replays the whole memory every step, otherwise a uniform sample of that size;
    `selection`, `per_class`, `groups`: see `episodic_memory`. With `scale_by_tasks` the replayed
    loss is also multiplied by the number of earlier tasks, t - 1 in task t: van de Ven et al.'s
    weighting 1/t (current) to 1 - 1/t (replayed), up to an overall factor t."""
    check_nonnegative(weight=weight)
    if not isinstance(scale_by_tasks, bool):
        raise ValueError(f"replay scale_by_tasks must be true or false, got {scale_by_tasks!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"replay batch_size must be an integer >= 0, got {batch_size!r}")
    memory = episodic_memory(capacity, example_x, example_y, selection, per_class, groups)

    def init(params):
        return ReplayState(
            jnp.asarray(weight, jnp.float32), memory.init(), jnp.zeros((), jnp.int32)
        )

    def penalty(params, state, batch, key):
        sample = trained_as(sample_buffer(state.memory, key, batch_size), batch)
        loss = objective.loss(params, sample)
        scale = state.tasks.astype(jnp.float32) if scale_by_tasks else 1.0
        return state.weight * scale * loss, {"loss": loss}

    def consolidate(state, params, data, key):
        inserted = memory.insert(state.memory, data, key)
        return state._replace(memory=inserted, tasks=state.tasks + 1)

    return regulariser("replay", init, penalty, consolidate=consolidate)


def memory_kwargs(ctx, kw: dict) -> dict:
    """An episodic memory's arguments from the experiment's context (replay, A-GEM): one
    example, and for class-balanced selection the stream's (task, class) groups."""
    capacity = kw.get("capacity")
    if isinstance(capacity, int) and capacity > ctx.num_examples:
        raise ValueError(
            f"capacity {capacity} is larger than the stream's {ctx.num_examples} training examples"
        )
    out = {"example_x": ctx.example_x, "example_y": ctx.example_y}
    if kw.get("selection") == "class_balanced":
        if ctx.groups is None:
            raise ValueError("selection 'class_balanced' needs integer class labels")
        out["groups"] = list(ctx.groups)
    return out


MEMORY_DEFAULTS = {"capacity": 500, "batch_size": 0, "selection": "reservoir", "per_class": None}

METHODS = {
    "replay": MethodSpec(
        lambda ctx, **kw: replay(ctx.objective, **memory_kwargs(ctx, kw), **kw),
        {**MEMORY_DEFAULTS, "weight": 1.0, "scale_by_tasks": False},
        "memory",
    ),
}
