"""RWalk against its closed form on a three-parameter pytree, and through the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual.regularisers.rwalk import rwalk

from helpers import run, toy_config


def test_rwalk_matches_its_closed_form():
    decay, damping, strength = 0.8, 0.01, 2.0
    reg = rwalk(strength=strength, decay=decay, damping=damping)
    thetas = [np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, -0.5]), np.array([0.7, 0.0, 0.0])]
    grads = [np.array([-1.0, 0.0, -2.0]), np.array([-0.5, 3.0, -1.0])]
    state = reg.init({"w": jnp.asarray(thetas[0])})
    for theta, g in zip(thetas[:2], grads, strict=True):
        state = reg.observe(state, {"w": jnp.asarray(theta)}, {"w": jnp.asarray(g)}, {}, None)
    final = {"w": jnp.asarray(thetas[2])}
    state = reg.consolidate(state, final, {}, None)
    # By hand: the Fisher after each step, each step credited in the Fisher of its time.
    f1 = (1 - decay) * grads[0] ** 2
    f2 = decay * f1 + (1 - decay) * grads[1] ** 2
    w = 0.0
    for g, f, a, b in zip(grads, (f1, f2), thetas[:2], thetas[1:], strict=True):
        w = w - g * (b - a) / (0.5 * f * (b - a) ** 2 + damping)
    np.testing.assert_allclose(state.fisher["w"], f2, rtol=1e-6)
    np.testing.assert_allclose(state.score["w"], 0.5 * w, rtol=1e-5)
    np.testing.assert_allclose(state.importance["w"], f2 + np.maximum(0.5 * w, 0), rtol=1e-5)
    theta = {"w": jnp.asarray([1.0, 2.0, 3.0])}
    want = strength * np.sum((f2 + np.maximum(0.5 * w, 0)) * (np.arange(1.0, 4.0) - thetas[2]) ** 2)
    assert float(reg.penalty(theta, state, {}, None)[0]) == pytest.approx(want, rel=1e-5)


def test_rwalk_refuses_bad_values():
    for kwargs, message in [
        ({"strength": -1.0}, "strength must be >= 0"),
        ({"decay": 1.5}, "decay must be <= 1"),
        ({"damping": "x"}, "damping must be a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            rwalk(**kwargs)


def test_rwalk_runs_through_the_runner_and_holds_the_old_task():
    config = toy_config(steps=400, methods=["naive", "rwalk"])
    # The path score of full-batch steps on the toy is large (its damping is 1e-3): a small
    # strength keeps gradient descent at lr 0.05 stable (strength 1 diverges there).
    config["regularisers"]["rwalk"] = {"strength": 0.1}
    config["methods"]["rwalk"] = {"use": ["rwalk"]}
    results = run(config)
    old = {name: r.matrix[-1][0] for name, r in results.items()}  # task A's error after B
    assert jnp.isfinite(jnp.asarray(list(old.values()))).all()
    assert old["rwalk"] < 0.5 * old["naive"]  # measured: 3.51 against 10.81
    assert jax.tree.leaves(results["rwalk"].params)  # the run recorded its parameters
