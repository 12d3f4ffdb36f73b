"""Likelihoods: per-example losses, metrics, and what EWC's Fisher estimators need.

Every function takes one example's model output `out` (C,), target `y` and label mask (C,) bool,
and is vmapped by the caller. The training loss is the negative log-likelihood, so that the
Fisher of a likelihood matches the curvature of its loss (EWC at strength 1 is Bayesian).
`next_token` is the sequence case: out (L, V) logits, y (L,) next tokens, mask (V,); its loss is
the mean over the non-[pad] positions and its metric bits per character. `answers` is the same
likelihood for question -> answer sequences (the question's targets [pad]), judged by exact match
of the greedy answer (continual.streams.knowledge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual.data.text import PAD  # positions whose target is [pad] do not count

MASKED = -1e9  # logit given to outputs outside the label mask


class Likelihood(NamedTuple):
    """A model's output distribution p(y | out) and the metric it is judged by."""

    name: str
    metric: str
    higher_is_better: bool
    nll: Callable  # (out, y, mask) -> scalar: -log p(y | out), the training loss
    metric_fn: Callable  # (out, y, mask) -> scalar per example
    scores: Callable  # (out, mask) -> (s (K,), w (K,)): exact Fisher = sum_k w_k (d s_k)^2
    sample: Callable  # (key, out, y, mask) -> y~ ~ p(y | out), where y is a target (PAD stays)
    # (name, metric_fn, higher_is_better): a second metric recorded beside the first
    second: tuple[str, Callable, bool] | None = None
    # y -> how many positions the nll averages over (sequences); None: one. The squared gradient
    # of a mean over n independent positions is 1/n of its Fisher: EWC multiplies it back.
    positions: Callable | None = None


def _masked_log_probs(out_C, mask_C):
    return jax.nn.log_softmax(jnp.where(mask_C, out_C, MASKED))


def _categorical_nll(out_C, y, mask_C):
    return -_masked_log_probs(out_C, mask_C)[y]


def _categorical_accuracy(out_C, y, mask_C):
    return (jnp.argmax(jnp.where(mask_C, out_C, MASKED)) == y).astype(jnp.float32)


def _categorical_scores(out_C, mask_C):
    # E_y[(d log p_y)^2] = sum_c p_c (d log p_c)^2: one score per class, weighted by p_c.
    logp_C = _masked_log_probs(out_C, mask_C)
    return logp_C, jax.lax.stop_gradient(jnp.exp(logp_C))


def _categorical_sample(key, out_C, y, mask_C):
    return jax.random.categorical(key, jnp.where(mask_C, out_C, MASKED))


def _gaussian_nll(out_C, y_C, mask_C):
    return 0.5 * jnp.sum(jnp.where(mask_C, (y_C - out_C) ** 2, 0.0))


def _squared_error(out_C, y_C, mask_C):
    return jnp.sum(jnp.where(mask_C, (y_C - out_C) ** 2, 0.0))


def _gaussian_scores(out_C, mask_C):
    # With unit variance, E_y[(d log p)^2] = sum_c (d f_c)^2: the scores are the outputs themselves.
    return out_C, mask_C.astype(out_C.dtype)


def _gaussian_sample(key, out_C, y_C, mask_C):
    return out_C + jax.random.normal(key, out_C.shape, out_C.dtype)


categorical = Likelihood(
    "categorical",
    "accuracy",
    True,
    _categorical_nll,
    _categorical_accuracy,
    _categorical_scores,
    _categorical_sample,
)
gaussian = Likelihood(
    "gaussian", "mse", False, _gaussian_nll, _squared_error, _gaussian_scores, _gaussian_sample
)


def _token_log_probs(out_LxV, mask_V):
    return jax.nn.log_softmax(jnp.where(mask_V[None, :], out_LxV, MASKED), axis=-1)


def _position_mean(values_L, y_L):
    valid_L = (y_L != PAD).astype(values_L.dtype)
    return jnp.sum(values_L * valid_L) / jnp.maximum(jnp.sum(valid_L), 1.0)


def _token_nll(out_LxV, y_L, mask_V):
    logp_LxV = _token_log_probs(out_LxV, mask_V)
    nll_L = -jnp.take_along_axis(logp_LxV, y_L[:, None], axis=-1)[:, 0]
    return _position_mean(nll_L, y_L)


def _bits_per_character(out_LxV, y_L, mask_V):
    return _token_nll(out_LxV, y_L, mask_V) / jnp.log(2.0)


def _token_accuracy(out_LxV, y_L, mask_V):
    hit_L = jnp.argmax(jnp.where(mask_V[None, :], out_LxV, MASKED), axis=-1) == y_L
    return _position_mean(hit_L.astype(jnp.float32), y_L)


def _token_scores(out_LxV, mask_V):
    # The loss is a mean over L positions: scores scaled by 1/sqrt(L) give its curvature,
    # (1/L) sum_l sum_v p_lv (d log p_lv)^2. K = L * V scores: expensive; prefer `sampled`.
    logp_LxV = _token_log_probs(out_LxV, mask_V)
    scale = out_LxV.shape[0] ** -0.5
    return (logp_LxV * scale).reshape(-1), jax.lax.stop_gradient(jnp.exp(logp_LxV)).reshape(-1)


def _token_sample(key, out_LxV, y_L, mask_V):
    # Positions without a target ([pad]: a question before its answer) keep none.
    sampled_L = jax.random.categorical(key, jnp.where(mask_V[None, :], out_LxV, MASKED), axis=-1)
    return jnp.where(y_L == PAD, PAD, sampled_L)


def _exact_match(out_LxV, y_L, mask_V):
    # Greedy decoding from the question reproduces the answer and its [end] exactly when the
    # likeliest token at every answer position (given the answer so far) is the right one.
    hit_L = jnp.argmax(jnp.where(mask_V[None, :], out_LxV, MASKED), axis=-1) == y_L
    return jnp.all(hit_L | (y_L == PAD)).astype(jnp.float32)


next_token = Likelihood(
    "next_token",
    "bits_per_char",
    False,
    _token_nll,
    _bits_per_character,
    _token_scores,
    _token_sample,
    ("accuracy", _token_accuracy, True),
    lambda y_L: jnp.maximum(jnp.sum(y_L != PAD), 1).astype(jnp.float32),
)
# Question -> answer sequences (targets [pad] on the question): judged by exact match of the
# greedy answer, bits per character on the answers recorded as the second reading.
answers = next_token._replace(
    name="answers",
    metric="exact_match",
    higher_is_better=True,
    metric_fn=_exact_match,
    second=("bits_per_char", _bits_per_character, False),
)
LIKELIHOODS = {
    "categorical": categorical,
    "gaussian": gaussian,
    "next_token": next_token,
    "answers": answers,
}


def weighted_mean(values_B: jax.Array, weight_B: jax.Array) -> jax.Array:
    """Mean of per-example values over the examples with non-zero weight (0 if there are none).

    A product with the reciprocal, not a quotient: under vmap over members with shared weights
    (evaluation) XLA rewrites x / broadcast(d) into x * broadcast(1 / d), so writing it that way
    keeps one member's value the same, to the bit, alone or in a sweep."""
    return jnp.sum(values_B * weight_B) * (1.0 / jnp.maximum(jnp.sum(weight_B), 1e-12))


class Objective(NamedTuple):
    """A model's apply function, its likelihood and the label mask of every task."""

    apply: Callable  # (params, x_BxD) -> out_BxC
    likelihood: Likelihood
    label_masks: jax.Array  # (T, C) bool

    def masks(self, batch) -> jax.Array:
        """Every example's label mask (B, C): its task's, narrowed to the batch's "outputs" when
        it carries them (training under a restriction such as the classes seen so far)."""
        masks = self.label_masks[batch["task"]]
        if "outputs" in batch:
            masks = masks & batch["outputs"]
        return masks

    def per_example(self, fn, params, batch):
        """fn(out, y, mask) for every example of a batch {"x", "y", "task", ...}."""
        out_BxC = self.apply(params, batch["x"])
        return jax.vmap(fn)(out_BxC, batch["y"], self.masks(batch))

    def loss(self, params, batch) -> jax.Array:
        """Weighted mean negative log-likelihood of a batch."""
        nll_B = self.per_example(self.likelihood.nll, params, batch)
        return weighted_mean(nll_B, batch["weight"])

    def metric(self, params, batch) -> jax.Array:
        """Weighted mean metric (accuracy or squared error) of a batch."""
        return self.metric_of(self.apply(params, batch["x"]), batch)

    def metric_of(self, out_BxC, batch) -> jax.Array:
        """The weighted mean metric of a batch whose model outputs `out_BxC` are computed."""
        return weighted_mean(self.metric_values(out_BxC, batch), batch["weight"])

    def metric_values(self, out_BxC, batch) -> jax.Array:
        """Every example's metric (B,) from the batch's computed model outputs `out_BxC`."""
        return jax.vmap(self.likelihood.metric_fn)(out_BxC, batch["y"], self.masks(batch))
