"""Gradient episodic memory, GEM (Lopez-Paz & Ranzato 2017).

Each finished task leaves `memory_per_task` of its training examples, chosen uniformly at random,
in its own preallocated slot (num_tasks, m, ...). Every step computes g_k, the loss gradient on
each past task's memory, and if the step's gradient g would increase any of those losses
(g . g_k < 0) replaces it by the closest gradient that increases none:

    min_z 1/2 |z - g|^2  s.t.  G z >= 0     (rows of G: the g_k),

solved through its dual, min_{v >= margin} 1/2 v' G G' v + g' G' v, with z = g + G' v. The dual is
a small box-constrained quadratic program (one variable per past task), solved here by a fixed
number of sweeps of exact coordinate descent (no external solver): one constraint gives A-GEM's
projection in one sweep, orthogonal constraints too. `margin` (the reference code's
memory_strength, 0.5 in its scripts) pushes the result further into the cone; it defaults to 0,
the paper's projection, and is a state leaf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import check_nonnegative, regulariser, trained_as
from continual.regularisers.registry import MethodSpec

HIGHEST = jax.lax.Precision.HIGHEST  # exact float32 inner products (no TF32 on GPUs)


class GEMState(NamedTuple):
    margin: jax.Array
    memory: dict  # {"x", "y", "task"}: (num_tasks, m, ...) each
    filled: jax.Array  # (num_tasks, m) bool
    count: jax.Array  # tasks consolidated so far


def solve_dual(gram_KxK, dots_K, lower_K, sweeps: int) -> jax.Array:
    """min_{v >= lower} 1/2 v' Q v + p' v by `sweeps` cycles of exact coordinate descent,
    starting from v = lower (a coordinate with Q_kk = 0 stays at its bound)."""
    k_max = dots_K.shape[0]

    def sweep(_, v_K):
        for k in range(k_max):
            q_kk = gram_KxK[k, k]
            residual = jnp.dot(gram_KxK[k], v_K, precision=HIGHEST) + dots_K[k]
            step = residual / jnp.where(q_kk > 0, q_kk, 1.0)
            new = jnp.where(q_kk > 0, jnp.maximum(lower_K[k], v_K[k] - step), v_K[k])
            v_K = v_K.at[k].set(new)
        return v_K

    return jax.lax.fori_loop(0, sweeps, sweep, lower_K)


def project_cone(grads, constraints, active_K, margin, sweeps: int):
    """GEM's projection of `grads` given per-task gradients `constraints` (a pytree whose
    leaves have a leading axis K) of which `active_K` (bool) count; unchanged if no active
    constraint is violated."""

    def dots(a, b, spec):
        terms = jax.tree.map(lambda x, y: jnp.einsum(spec, x, y, precision=HIGHEST), a, b)
        return sum(jax.tree.leaves(terms))

    def flat(tree):  # (K, P) per leaf, for the inner products
        return jax.tree.map(lambda c: c.reshape(c.shape[0], -1), tree)

    rows = flat(constraints)
    gram_KxK = dots(rows, rows, "kp,jp->kj")
    dots_K = dots(rows, jax.tree.map(lambda g: g.reshape(1, -1), grads), "kp,jp->kj")[:, 0]
    active_K = active_K & (jnp.diagonal(gram_KxK) > 0)
    both_KxK = active_K[:, None] & active_K[None, :]
    v_K = solve_dual(
        jnp.where(both_KxK, gram_KxK, 0.0),
        jnp.where(active_K, dots_K, 0.0),
        jnp.where(active_K, margin, 0.0),
        sweeps,
    )
    v_K = jnp.where(jnp.any(active_K & (dots_K < 0)), v_K, 0.0)  # only when one is violated

    def add(g, c):
        return g + jnp.tensordot(v_K, c, axes=1, precision=HIGHEST).astype(g.dtype)

    return jax.tree.map(add, grads, constraints)


def gem(
    objective,
    num_tasks: int,
    memory_per_task: int,
    example_x,
    example_y,
    margin: float = 0.0,
    sweeps: int = 50,
):
    """GEM regulariser: `num_tasks` memory slots of `memory_per_task` examples each; `sweeps`
    coordinate-descent cycles over the dual (a static choice). A stream longer than `num_tasks`
    keeps overwriting the last slot."""
    check_nonnegative(margin=margin)
    for name, value in (
        ("num_tasks", num_tasks),
        ("memory_per_task", memory_per_task),
        ("sweeps", sweeps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gem {name} must be a positive integer, got {value!r}")
    m = memory_per_task

    def init(params):
        def zeros(example):
            example = jnp.asarray(example)
            return jnp.zeros((num_tasks, m, *example.shape), example.dtype)

        memory = {"x": zeros(example_x), "y": zeros(example_y), "task": zeros(jnp.int32(0))}
        return GEMState(
            jnp.asarray(margin, jnp.float32),
            memory,
            jnp.zeros((num_tasks, m), bool),
            jnp.zeros((), jnp.int32),
        )

    def transform(grads, params, state, batch, key):
        def task_grad(memory, filled):
            sample = trained_as({**memory, "weight": filled.astype(jnp.float32)}, batch)
            return jax.grad(objective.loss)(params, sample)  # zero for an empty slot

        constraints = jax.vmap(task_grad)(state.memory, state.filled)
        return project_cone(grads, constraints, state.filled.any(axis=1), state.margin, sweeps)

    def consolidate(state, params, data, key):
        n = data["weight"].shape[0]
        valid = data["weight"] > 0
        # A uniform random choice of m valid examples: padding sorts last.
        order = jnp.argsort(jax.random.uniform(key, (n,)) + jnp.logical_not(valid))
        src = order[jnp.arange(m) % n]
        filled = (jnp.arange(m) < jnp.sum(valid)) & (jnp.arange(m) < n)
        slot = jnp.minimum(state.count, num_tasks - 1)

        def put(stack, value):
            return jax.lax.dynamic_update_index_in_dim(stack, value, slot, 0)

        memory = {k: put(v, data[k][src]) for k, v in state.memory.items()}
        return state._replace(
            memory=memory, filled=put(state.filled, filled), count=state.count + 1
        )

    return regulariser("gem", init, transform=transform, consolidate=consolidate)


METHODS = {
    "gem": MethodSpec(
        lambda ctx, **kw: gem(
            ctx.objective,
            num_tasks=ctx.num_tasks,
            example_x=ctx.example_x,
            example_y=ctx.example_y,
            **kw,
        ),
        {"memory_per_task": 40, "margin": 0.0, "sweeps": 50},
        "projection",
    ),
}
