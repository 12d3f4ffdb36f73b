"""The exact diagonal Fisher of a network of Dense layers, without per-example gradients.

For a Dense layer z = a W + b, an example's gradient of the score s_k is a ⊗ δ_k (δ_k = ds_k/dz),
so the sum over examples of its square is (a²)ᵀ(δ_k²): one matmul per score, where the generic
path materialises a params-sized gradient per example and score. The δ_k of every example come
from one backward pass of the batch's summed score (examples do not interact), taken with
respect to zero perturbations added to each layer's output; the inputs a are recorded on the way.
Layers are found with `flax.linen.intercept_methods`, so any linen model qualifies whose every
parameter belongs to an `nn.Dense` applied to (batch, features) inputs (Linear, MLP); others
return None and EWC falls back to per-example gradients.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Examples per backward pass. Each chunk's kernel sums are matrix products over its examples; in
# a sweep the examples are shared by the members, so XLA folds the member axis into the products'
# width, and XLA:CPU splits a sum longer than its cache block (about 500 here) by the shape: a
# member would round differently than when run alone. A shorter sum is summed in one order
# (tests/test_sweep.py).
_CHUNK = 256


def _is_dense_call(context) -> bool:
    return isinstance(context.module, nn.Dense) and context.method_name == "__call__"


def dense_layers(apply, params, x_BxD) -> list[tuple[str, ...]] | None:
    """The module paths of the Dense layers `apply` calls, in call order, if they hold every
    parameter and each sees (batch, features) inputs and is called once; else None."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if _is_dense_call(context):
            calls.append((tuple(context.module.path), args[0].ndim))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda p, x: apply(p, x), params, x_BxD)  # fresh: no trace cache
    paths = [p for p, _ in calls]
    if not calls or any(ndim != 2 for _, ndim in calls) or len(set(paths)) != len(paths):
        return None
    leaves = {
        tuple(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    covered = {("params", *p, name) for p in paths for name in ("kernel", "bias")}
    return paths if leaves == covered else None


def dense_fisher(objective, params, data, paths):
    """Sum over the examples of `data` (weighted) of sum_k w_k (d s_k)² for every Dense kernel
    and bias: the exact Fisher's numerator, in the layout of `params`."""
    lik = objective.likelihood

    def chunk_sums(batch):
        x, weight = batch["x"], batch["weight"]
        masks = objective.masks(batch)

        def scores(eps):
            inputs = []
            it = iter(eps)

            def perturb(next_fun, args, kwargs, context):
                if not _is_dense_call(context):
                    return next_fun(*args, **kwargs)
                inputs.append(args[0])
                return next_fun(*args, **kwargs) + next(it)

            with nn.intercept_methods(perturb):
                out = objective.apply(params, x)
            s_BxK, w_BxK = jax.vmap(lik.scores)(out, masks)
            return s_BxK, (w_BxK, inputs)

        # Each layer's output is (batch, its kernel's output width): no second trace needed.
        widths = [_leaf(params, p, "kernel").shape[-1] for p in paths]
        eps = [jnp.zeros((x.shape[0], w), jnp.float32) for w in widths]
        s_BxK, vjp, (w_BxK, inputs) = jax.vjp(scores, eps, has_aux=True)
        w_BxK = jax.lax.stop_gradient(w_BxK) * weight[:, None]

        def one_score(k):
            (deltas,) = vjp(jax.nn.one_hot(jnp.full(s_BxK.shape[0], k), s_BxK.shape[1]))
            return [
                ((a**2).T @ (w_BxK[:, k, None] * d**2), w_BxK[:, k] @ d**2)
                for a, d in zip(inputs, deltas, strict=True)
            ]

        per_score = jax.lax.map(one_score, jnp.arange(s_BxK.shape[1]))
        return [(kernel.sum(0), bias.sum(0)) for kernel, bias in per_score]

    n = data["x"].shape[0]
    chunk = min(n, _CHUNK)
    pad = -n % chunk
    data = jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), data)
    chunks = jax.tree.map(lambda a: a.reshape(-1, chunk, *a.shape[1:]), data)
    zero = [
        (jnp.zeros_like(_leaf(params, p, "kernel")), jnp.zeros_like(_leaf(params, p, "bias")))
        for p in paths
    ]
    total, _ = jax.lax.scan(
        lambda acc, b: (jax.tree.map(jnp.add, acc, chunk_sums(b)), None), zero, chunks
    )
    out = jax.tree.map(jnp.zeros_like, params)
    for p, (kernel, bias) in zip(paths, total, strict=True):
        out["params"] = _set(out["params"], p, {"kernel": kernel, "bias": bias})
    return out


def _leaf(params, path, name):
    node = params["params"]
    for key in path:
        node = node[key]
    return node[name]


def _set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}
