"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019).

A memory of earlier examples (replay's: reservoir or class-balanced selection, filled at the end
of each task) gives a reference gradient g_ref, the gradient of the loss on a sample of it. When
the step's gradient g would increase that loss (g . g_ref < 0), it is projected onto the half
space where it does not:

    g <- g - (g . g_ref) / (g_ref . g_ref) * g_ref,

dot products taken over the whole parameter pytree. No penalty; identity while the memory is
empty. The projection has no continuous hyperparameter.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.regularisers.base import regulariser, trained_as
from continual.regularisers.registry import MethodSpec
from continual.regularisers.replay import (
    MEMORY_DEFAULTS,
    Buffer,
    episodic_memory,
    memory_kwargs,
    sample_buffer,
)


class AGEMState(NamedTuple):
    memory: Buffer


def tree_dot(a, b) -> jax.Array:
    """The dot product of two pytrees of the same structure, over all their leaves."""
    terms = jax.tree.map(lambda x, y: jnp.sum(x * y), a, b)
    return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def project(grads, reference):
    """A-GEM's projection of `grads` against `reference` (unchanged if their dot is >= 0)."""
    dot = tree_dot(grads, reference)
    norm = tree_dot(reference, reference)
    scale = jnp.where(dot < 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda g, r: g - scale.astype(g.dtype) * r, grads, reference)


def agem(
    objective,
    capacity: int,
    example_x,
    example_y,
    batch_size: int = 0,
    selection: str = "reservoir",
    per_class: int | None = None,
    groups=None,
):
    """A-GEM regulariser: `batch_size` memory examples give the reference gradient (0: the whole
    memory); `capacity`, `selection`, `per_class`, `groups` as for replay's memory."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"agem batch_size must be an integer >= 0, got {batch_size!r}")
    memory = episodic_memory(capacity, example_x, example_y, selection, per_class, groups)

    def init(params):
        return AGEMState(memory.init())

    def transform(grads, params, state, batch, key):
        sample = trained_as(sample_buffer(state.memory, key, batch_size), batch)
        reference = jax.grad(objective.loss)(params, sample)  # zero while the memory is empty
        return project(grads, reference)

    def consolidate(state, params, data, key):
        return AGEMState(memory.insert(state.memory, data, key))

    return regulariser("agem", init, transform=transform, consolidate=consolidate)


METHODS = {
    "agem": MethodSpec(
        lambda ctx, **kw: agem(ctx.objective, **memory_kwargs(ctx, kw), **kw),
        MEMORY_DEFAULTS,
        "projection",
    ),
}
