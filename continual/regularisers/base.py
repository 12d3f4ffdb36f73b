"""The Regulariser protocol: the optax idea applied to forgetting.

A regulariser is a NamedTuple of pure functions over an explicit pytree state:

    init(params)                                -> state
    penalty(params, state, batch, key)          -> (scalar, metrics)   added to the loss
    transform(grads, params, state, batch, key) -> grads               e.g. A-GEM's projection
    observe(state, params, grads, batch, key)   -> state               every step (SI, reservoirs)
    consolidate(state, params, data, key)       -> state               at the end of a task

`data` given to consolidate is the finished task's whole training split as one batch
{"x", "y", "task", "weight"} (zero weight marks padding). Static choices are closed over by the
factory; continuous hyperparameters (strengths, decays, weights) are array leaves of the state so
that a sweep can stack them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Regulariser(NamedTuple):
    """A pluggable anti-forgetting method: five pure functions and a name for its metrics."""

    name: str
    init: Callable
    penalty: Callable
    transform: Callable
    observe: Callable
    consolidate: Callable


def _no_penalty(params, state, batch, key):
    return jnp.zeros((), jnp.float32), {}


def _same_grads(grads, params, state, batch, key):
    return grads


def _same_state(state, *args):
    return state


def regulariser(
    name: str,
    init: Callable,
    penalty: Callable = _no_penalty,
    transform: Callable = _same_grads,
    observe: Callable = _same_state,
    consolidate: Callable = _same_state,
) -> Regulariser:
    """Builds a Regulariser, filling the hooks it does not use with no-ops."""
    return Regulariser(name, init, penalty, transform, observe, consolidate)


def trained_as(sample: dict, batch: dict) -> dict:
    """A memory `sample` trained under the current `batch`'s output restriction, if it has one
    (a replayed digit of the first task meets every class seen so far, not only its own two)."""
    if "outputs" not in batch:
        return sample
    n = sample["y"].shape[0]
    return {
        **sample,
        "outputs": jnp.broadcast_to(batch["outputs"][0], (n, *batch["outputs"].shape[1:])),
    }


def identity() -> Regulariser:
    """Naive fine-tuning: no penalty, no state."""
    return regulariser("naive", lambda params: ())


def chain(*parts: Regulariser) -> Regulariser:
    """Several regularisers at once: penalties add, states stay apart, transforms compose."""
    if not parts:
        return identity()
    names = [p.name for p in parts]
    labels = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]

    def keys(key):
        return [jax.random.fold_in(key, i) for i in range(len(parts))]

    def init(params):
        return tuple(p.init(params) for p in parts)

    def penalty(params, state, batch, key):
        total, metrics = jnp.zeros((), jnp.float32), {}
        for label, p, s, k in zip(labels, parts, state, keys(key), strict=True):
            value, m = p.penalty(params, s, batch, k)
            total = total + value
            metrics[f"{label}/penalty"] = value
            metrics.update({f"{label}/{name}": v for name, v in m.items()})
        return total, metrics

    def transform(grads, params, state, batch, key):
        for p, s, k in zip(parts, state, keys(key), strict=True):
            grads = p.transform(grads, params, s, batch, k)
        return grads

    def observe(state, params, grads, batch, key):
        return tuple(
            p.observe(s, params, grads, batch, k)
            for p, s, k in zip(parts, state, keys(key), strict=True)
        )

    def consolidate(state, params, data, key):
        return tuple(
            p.consolidate(s, params, data, k)
            for p, s, k in zip(parts, state, keys(key), strict=True)
        )

    return Regulariser("+".join(labels), init, penalty, transform, observe, consolidate)


def quadratic(params, anchor, importance) -> jax.Array:
    """0.5 * sum importance * (params - anchor)^2 over every leaf (importance: a params-shaped
    pytree); its gradient is importance * (params - anchor)."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * (p - a) ** 2), params, anchor, importance)
    return 0.5 * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def check_nonnegative(**values) -> None:
    """Raises ValueError naming the first hyperparameter that is negative or not a number."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not value >= 0:  # also catches NaN
            raise ValueError(f"{name} must be >= 0, got {value}")


_CHUNK_FLOATS = 2**21  # per-chunk budget for per-example gradients (8 MiB of float32 per
# member: a sweep vmaps this over its members)


def subset(data, key, num_samples: int | None):
    """A uniform random subset of `num_samples` valid examples of a batch (all when None or
    when there are fewer rows); padding rows sort last, so they are picked only if needed."""
    n = data["x"].shape[0]
    if num_samples is None or num_samples >= n:
        return data
    order = jnp.argsort(jax.random.uniform(key, (n,)) + (data["weight"] <= 0))
    return jax.tree.map(lambda a: a[order[:num_samples]], data)


def example_mean(
    per_example,
    objective,
    params,
    data,
    key,
    num_samples: int | None = None,
    copies: int = 1,
):
    """Mean over the valid examples of `data` (or a random subset of `num_samples` of them) of
    per_example(x, y, mask, key) -> a params-shaped pytree, `mask` the example's label mask under
    `objective`, computed in chunks of examples small enough that `copies` params-sized arrays
    per example stay within a fixed memory budget."""
    pick_key, example_key = jax.random.split(key)
    data = {k: data[k] for k in ("x", "y", "weight")} | {"mask": objective.masks(data)}
    data = subset(data, pick_key, num_samples)
    n = data["x"].shape[0]
    num_params = sum(p.size for p in jax.tree.leaves(params))
    chunk = int(max(1, min(n, _CHUNK_FLOATS // (num_params * copies))))
    pad = -n % chunk
    data = jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), data)
    keys = jax.random.split(example_key, n + pad)

    def add_chunk(total, rows):
        d, k = rows
        values = jax.vmap(per_example)(d["x"], d["y"], d["mask"], k)
        return jax.tree.map(
            lambda t, v: t + jnp.tensordot(d["weight"], v, axes=1), total, values
        ), None

    chunks = jax.tree.map(lambda a: a.reshape(-1, chunk, *a.shape[1:]), (data, keys))
    total, _ = jax.lax.scan(add_chunk, jax.tree.map(jnp.zeros_like, params), chunks)
    count = jnp.maximum(jnp.sum(data["weight"]), 1e-12)
    return jax.tree.map(lambda t: t / count, total)
