"""Learning without forgetting (Li & Hoiem 2017): the current inputs distilled to the previous
model (with units="all", as van de Ven et al. (2022) run it in class-incremental learning; in
task-incremental learning one softmax spans all seen heads, where they take one per head).

At a task's end the current parameters are kept as the previous model, and the output units of
the tasks seen so far are marked: for a categorical output, the units of their label masks that
occurred as a training label (the classes seen so far), otherwise their whole label masks. On
every batch,

    penalty = strength * T^2 * mean_x KL(softmax(f_old(x)/T) || softmax(f(x)/T)),

the mean over the batch's valid (weight > 0) inputs (for sequences, over their positions whose
input is not [pad]), the previous model's outputs held constant. Both softmaxes span `units`:

    seen  the units of the tasks seen so far (class-incremental learning then does not distil
          the classes still to come);
    all   every unit the batch trains (its label masks): in class-incremental learning also the
          previous model's low scores for the new classes, as van de Ven et al.'s code does
          (`loss_fn_kd` with every output active, their default). Class- and
          domain-incremental streams only (one label mask for every task).

T^2 keeps the gradient's scale independent of the temperature (Hinton et al. 2015); their loss
has no such factor (`strength` = 1 / T^2 is theirs). Zero until the first task is consolidated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual.data.text import PAD
from continual.losses import MASKED, weighted_mean
from continual.regularisers.base import check_nonnegative, regulariser
from continual.regularisers.registry import MethodSpec


class LwFState(NamedTuple):
    strength: jax.Array
    temperature: jax.Array  # T
    previous: object  # the parameters at the end of the last task
    seen: jax.Array  # (C,) bool: output units of the tasks consolidated so far
    tasks: jax.Array  # tasks consolidated so far (for scale_by_tasks)


def distillation(out_BxC, target_BxC, seen_C, temperature, valid=None) -> jax.Array:
    """T^2 * KL(softmax(target/T) || softmax(out/T)) per example, over the `seen` units ((C,), or
    any shape that broadcasts against the outputs; 0 for an example with none seen); outputs with
    more axes (B, ..., C) average over the middle ones, or over those where `valid` (B, ...) is
    true (a sequence's non-[pad] inputs)."""
    seen = jnp.broadcast_to(seen_C, out_BxC.shape)
    logp = jax.nn.log_softmax(jnp.where(seen, out_BxC / temperature, MASKED), axis=-1)
    logq = jax.nn.log_softmax(jnp.where(seen, target_BxC / temperature, MASKED), axis=-1)
    kl = jnp.sum(jnp.where(seen, jnp.exp(logq) * (logq - logp), 0.0), axis=-1)
    kl = kl.reshape(kl.shape[0], -1)
    if valid is None:
        return temperature**2 * kl.mean(axis=1)
    valid = valid.reshape(kl.shape).astype(kl.dtype)
    return temperature**2 * jnp.sum(kl * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)


UNITS = ("seen", "all")


def lwf(
    objective,
    strength: float = 1.0,
    temperature: float = 2.0,
    scale_by_tasks: bool = False,
    units: str = "seen",
):
    """LwF regulariser: `strength` weighs the distillation loss, `temperature` softens both
    distributions (van de Ven et al. use T = 2); `scale_by_tasks` also multiplies it by the
    number of earlier tasks, t - 1 in task t (their 1/t : 1 - 1/t weighting, up to a factor t);
    `units`: the output units distilled, "seen" or "all" (see the module docstring)."""
    check_nonnegative(strength=strength, temperature=temperature)
    if not isinstance(scale_by_tasks, bool):
        raise ValueError(f"lwf scale_by_tasks must be true or false, got {scale_by_tasks!r}")
    if units not in UNITS:
        raise ValueError(f"lwf units must be one of {', '.join(UNITS)}, got {units!r}")
    if temperature == 0:
        raise ValueError("temperature must be > 0, got 0")
    masks = np.asarray(objective.label_masks)
    if units == "all" and not (masks == masks[:1]).all():
        raise ValueError(
            "lwf units='all' distils the outputs the current task trains, which in "
            "task-incremental learning are its own new head: use units='seen'"
        )
    categorical = objective.likelihood.name == "categorical"
    sequences = objective.likelihood.positions is not None  # token inputs: [pad] is no position

    def init(params):
        return LwFState(
            jnp.asarray(strength, jnp.float32),
            jnp.asarray(temperature, jnp.float32),
            params,
            jnp.zeros(objective.label_masks.shape[-1:], bool),
            jnp.zeros((), jnp.int32),
        )

    def penalty(params, state, batch, key):
        target = jax.lax.stop_gradient(objective.apply(state.previous, batch["x"]))
        out = objective.apply(params, batch["x"])
        valid = batch["x"] != PAD if sequences else None
        if units == "all":  # (B, C) -> (B, 1, ..., C), zero until a previous model exists
            masks = objective.masks(batch) & (state.tasks > 0)
            shown = masks.reshape(masks.shape[:1] + (1,) * (out.ndim - 2) + masks.shape[1:])
        else:
            shown = state.seen
        kd_B = distillation(out, target, shown, state.temperature, valid)
        scale = state.tasks.astype(jnp.float32) if scale_by_tasks else 1.0
        return state.strength * scale * weighted_mean(kd_B, batch["weight"]), {}

    def consolidate(state, params, data, key):
        valid = data["weight"] > 0
        units = jnp.any(objective.masks(data) & valid[:, None], axis=0)
        if categorical:  # only the classes that occurred
            labels = data["y"].reshape(valid.shape[0], -1)
            hits = jnp.broadcast_to(valid[:, None], labels.shape).astype(jnp.int32)
            units = units & (jnp.zeros(units.shape, jnp.int32).at[labels].max(hits) > 0)
        return state._replace(previous=params, seen=state.seen | units, tasks=state.tasks + 1)

    return regulariser("lwf", init, penalty, consolidate=consolidate)


METHODS = {
    "lwf": MethodSpec(
        lambda ctx, **kw: lwf(ctx.objective, **kw),
        {"strength": 1.0, "temperature": 2.0, "scale_by_tasks": False, "units": "seen"},
        "anchored",
    ),
}
