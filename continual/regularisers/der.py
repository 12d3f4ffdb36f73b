"""Dark experience replay, DER and DER++ (Buzzega et al. 2020).

Every training step offers its batch to a reservoir (replay's, exact Algorithm R) together with
the model's outputs on it at that step (before the update; no gradient flows into them), so the
memory holds (x, logits, y, task) sampled uniformly from everything trained on. The penalty is

    alpha * mean_{x'} mean_c (f(x')_c - z'_c)^2  +  beta * loss(f(x''), y''),

(x', z') and (x'', y'') two independent samples of the memory (the same one, the whole memory,
when `batch_size` is 0); the squared error averages over every output unit, as the reference
implementation's mse_loss does. beta = 0 is DER, beta > 0 DER++ (the paper's grids use alpha in
0.1 .. 1 and beta around 0.5). Both are state leaves; zero while the memory is empty.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual.losses import weighted_mean
from continual.regularisers.base import check_nonnegative, regulariser, trained_as
from continual.regularisers.registry import MethodSpec
from continual.regularisers.replay import Buffer, empty_buffer, reservoir_insert, sample_buffer


class DERState(NamedTuple):
    alpha: jax.Array  # weight of the logit-matching term
    beta: jax.Array  # weight of the label term (DER++)
    memory: Buffer  # rows {"x", "y", "task", "out"}


def der(
    objective,
    capacity: int,
    example_x,
    example_y,
    alpha: float = 0.5,
    beta: float = 0.0,
    batch_size: int = 0,
):
    """DER (beta = 0) or DER++ (beta > 0) regulariser; `example_x`/`example_y` are one
    example's arrays (shape and dtype), `batch_size` 0 uses the whole memory every step."""
    check_nonnegative(alpha=alpha, beta=beta)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"der capacity must be a positive integer, got {capacity!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"der batch_size must be an integer >= 0, got {batch_size!r}")

    def init(params):
        x = jnp.asarray(example_x)[None]
        out = jax.eval_shape(objective.apply, params, x)  # the logits of one example
        example = {"x": example_x, "y": example_y, "task": np.int32(0)}
        example["out"] = jnp.zeros(out.shape[1:], out.dtype)
        return DERState(
            jnp.asarray(alpha, jnp.float32),
            jnp.asarray(beta, jnp.float32),
            empty_buffer(capacity, example),
        )

    def penalty(params, state, batch, key):
        k_logits, k_labels = jax.random.split(key)
        sample = sample_buffer(state.memory, k_logits, batch_size)
        err = (objective.apply(params, sample["x"]) - sample["out"]) ** 2
        mse = weighted_mean(err.reshape(err.shape[0], -1).mean(axis=1), sample["weight"])
        labels = trained_as(sample_buffer(state.memory, k_labels, batch_size), batch)
        loss = objective.loss(params, labels)
        return state.alpha * mse + state.beta * loss, {"mse": mse, "loss": loss}

    def observe(state, params, grads, batch, key):
        out = jax.lax.stop_gradient(objective.apply(params, batch["x"]))
        return state._replace(memory=reservoir_insert(state.memory, {**batch, "out": out}, key))

    return regulariser("der", init, penalty, observe=observe)


def _build(ctx, **kw):
    return der(ctx.objective, example_x=ctx.example_x, example_y=ctx.example_y, **kw)


METHODS = {
    "der": MethodSpec(
        _build, {"capacity": 500, "alpha": 0.5, "beta": 0.0, "batch_size": 0}, "memory"
    ),
    # DER++: DER whose beta (the weight of the memory's label loss) defaults to 0.5
    "derpp": MethodSpec(
        _build, {"capacity": 500, "alpha": 0.5, "beta": 0.5, "batch_size": 0}, "memory"
    ),
}
