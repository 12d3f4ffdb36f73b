"""Minibatch sampling: "uniform" (with replacement) and "shuffle" (epochs without replacement)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import runner
from continual.config import ConfigError
from continual.regularisers.base import regulariser
from continual.train import epoch_order, init_state, make_chunk

from helpers import run, toy_config

# Task A's points have x = 0..9, task B's x = 10..16: an example is known by its x.
TASKS = tuple(tuple((float(i), i % 3 - 1.0) for i in ids) for ids in (range(10), range(10, 17)))


def counting():
    """A regulariser whose state counts how often each example (by its x) was trained on."""

    def observe(state, params, grads, batch, key):
        return state + jnp.zeros(17).at[batch["x"][:, 0].astype(jnp.int32)].add(1.0)

    return regulariser("counting", lambda params: jnp.zeros(17), observe=observe)


def chunks(sampling, batch_size, num_steps, reg=None):
    """The initial state on TASKS and a jitted chunk of `num_steps` (with `reg`, by default one
    that counts the examples it uses): (state, go -> state, go -> (state, losses)), where
    go(state, task, start, done)."""
    plan = runner.plan(toy_config(tasks=TASKS, steps=40, methods=["naive"]))
    method = plan.methods[0]
    reg = reg or counting()
    state = init_state(method.params, method.optimizer, reg, jax.random.key(3))
    chunk = make_chunk(
        method.objective, method.optimizer, reg, batch_size, num_steps, sampling=sampling
    )
    trainable = jax.tree.map(lambda a: jnp.float32(1), method.params)
    test = plan.test

    def go(state, task, start, done=None):
        done = state.step if done is None else jnp.int32(done)  # no step rejected before
        state, losses, _ = jax.jit(chunk)(
            state, plan.train, test, jnp.int32(task), trainable, jnp.int32(start), done
        )
        return state, np.asarray(losses["total"])

    return state, lambda *args: go(*args)[0], go


def observe_counts(state):
    return np.asarray(state.reg_state)


@pytest.mark.slow
def test_shuffle_uses_every_example_once_per_epoch_and_drops_the_remainder():
    state, go, _ = chunks("shuffle", batch_size=3, num_steps=3)  # task A: 3 batches, 1 left
    before, left_out = observe_counts(state), []
    for epoch in range(4):
        state = go(state, 0, 3 * epoch)
        seen = observe_counts(state) - before
        before = observe_counts(state)
        assert sorted(set(seen[:10].tolist())) == [0.0, 1.0] and seen[:10].sum() == 9
        assert not seen[10:].any()
        left_out.append(int(np.argmin(seen[:10])))
    assert len(set(left_out)) > 1  # a new order every epoch
    # Task B (7 examples, padded to 10): 2 batches an epoch, never a padding slot.
    state, go, _ = chunks("shuffle", batch_size=3, num_steps=2)
    before = observe_counts(state)
    for epoch in range(3):
        state = go(state, 1, 2 * epoch)
        seen = observe_counts(state) - before
        before = observe_counts(state)
        assert not seen[:10].any() and seen[10:].sum() == 6 and seen[10:].max() == 1


def test_uniform_draws_with_replacement():
    state, go, _ = chunks("uniform", batch_size=3, num_steps=30)
    seen = observe_counts(go(state, 0, 0))
    assert seen.sum() == 90 and seen[:10].all() and not seen[10:].any()
    assert seen.max() > 9  # 30 batches of 3 over 10 examples: not 9 each as epochs would give


@pytest.mark.slow
def test_a_chunk_starting_mid_epoch_continues_that_epoch():
    state, whole, _ = chunks("shuffle", batch_size=4, num_steps=5)
    _, first, _ = chunks("shuffle", batch_size=4, num_steps=2)
    _, rest, _ = chunks("shuffle", batch_size=4, num_steps=3)
    once = whole(state, 0, 0)._replace(key=None)
    twice = rest(first(state, 0, 0), 0, 2)._replace(key=None)
    assert observe_counts(once).sum() == 20
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("sampling", ["uniform", "shuffle"])
def test_a_member_stays_frozen_after_its_first_non_finite_step(sampling):
    # A penalty that is NaN whenever example 0 is in the batch: the first such step freezes
    # the member for good, though later batches (a new epoch's) would be finite.
    def penalty(params, state, batch, key):
        return jnp.where((batch["x"][:, 0] == 0).any(), jnp.nan, 0.0), {}

    nan_on_0 = regulariser("nan_on_0", lambda params: (), penalty=penalty)
    state, _, go = chunks(sampling, batch_size=3, num_steps=12, reg=nan_on_0)
    state, losses = go(state, 0, 0, 0)
    first = int(np.argmax(np.isnan(losses)))
    assert np.isnan(losses[first:]).all() and np.isfinite(losses[:first]).all()
    assert int(state.step) == first
    state, losses = go(state, 0, 12, 12)  # the next chunk: still frozen
    assert np.isnan(losses).all() and int(state.step) == first


def test_epoch_order_is_a_permutation_of_the_valid_examples():
    plan = runner.plan(toy_config(tasks=TASKS, steps=40, methods=["naive"]))
    key = jax.random.key(0)
    orders = [np.asarray(epoch_order(plan.train, 1, key, e)) for e in range(3)]
    for order in orders:
        assert sorted(order[:7].tolist()) == list(range(7))  # task B's 7; padding last
        assert sorted(order[7:].tolist()) == [7, 8, 9]
    assert len({tuple(o[:7]) for o in orders}) == 3


def run_toy(eval_every, **train):
    config = toy_config(tasks=TASKS, steps=40, methods=["naive", "ewc"])
    config["optimizer"]["learning_rate"] = 0.003  # x up to 16
    config["train"].update(batch_size=3, eval_every=eval_every, **train)
    return run(config)


@pytest.mark.slow
def test_a_run_in_chunks_equals_one_chunk_per_task():
    # Chunks of 8 steps start mid-epoch (3 batches an epoch on A): the same numbers as 40 at once.
    whole, parts = run_toy(40, sampling="shuffle"), run_toy(8, sampling="shuffle")
    uniform = run_toy(40)
    for name in whole:
        np.testing.assert_array_equal(whole[name].matrix, parts[name].matrix)
        assert whole[name].matrix != uniform[name].matrix


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.sampling=epochs"], "train.sampling must be one of 'uniform', 'shuffle'"),
        (["train.sampling=shuffle", "train.batch_size=0"], "needs train.batch_size > 0"),
        (
            ["train.sampling=shuffle", "train.batch_size=8"],
            "than task 'B'.s 7 training examples, so",
        ),
    ],
)
def test_bad_sampling_is_refused_before_anything_runs(overrides, message):
    config = toy_config(tasks=TASKS, steps=40, methods=["naive"])
    with pytest.raises(ConfigError, match=message):
        runner.plan(runner.configure(config, overrides))
