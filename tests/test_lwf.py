"""LwF's closed forms: the temperature-scaled KL to the previous model, over the classes seen so
far (units="seen") or every output the batch trains (units="all")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual.regularisers import lwf

from regulariser_setup import MODEL, OBJ, PARAMS, STREAM, leaves_equal, moved, task_data


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
def test_lwf_is_a_temperature_scaled_kl_to_the_previous_model():
    strength, temp = 1.5, 3.0
    reg = lwf(OBJ, strength=strength, temperature=temp)
    state = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), None)
    data, theta = task_data(1), moved(PARAMS)
    assert float(reg.penalty(PARAMS, state, data, None)[0]) == 0.0  # the previous model itself
    seen = np.asarray(STREAM.tasks[0].label_mask)
    new = np.asarray(MODEL.apply(theta, data["x"]))[:, seen] / temp
    old = np.asarray(MODEL.apply(PARAMS, data["x"]))[:, seen] / temp
    p, q = _softmax(old), _softmax(new)
    kl = (p * (np.log(p) - np.log(q))).sum(-1).mean()
    value = float(reg.penalty(theta, state, data, None)[0])
    assert value == pytest.approx(strength * temp**2 * kl, rel=1e-4)
    # d/dz [T^2 KL(p || softmax(z/T))] = T (q - p) on the seen units: back through the model.
    cot = np.zeros((len(data["x"]), STREAM.num_outputs), np.float32)
    cot[:, seen] = strength * temp * (q - p) / len(data["x"])
    _, vjp = jax.vjp(lambda prm: MODEL.apply(prm, data["x"]), theta)
    (want,) = vjp(jnp.asarray(cot))
    got = jax.grad(lambda prm: reg.penalty(prm, state, data, None)[0])(theta)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # Padding rows do not count towards the mean.
    padded = task_data(1, pad=5)
    assert float(reg.penalty(theta, state, padded, None)[0]) == pytest.approx(value, rel=1e-6)


def test_lwf_distils_the_units_of_the_tasks_seen_so_far():
    reg = lwf(OBJ)
    s = reg.init(PARAMS)
    assert not np.asarray(s.seen).any()
    s = reg.consolidate(s, PARAMS, task_data(0), None)
    np.testing.assert_array_equal(s.seen, STREAM.tasks[0].label_mask)
    s = reg.consolidate(s, moved(PARAMS), task_data(1), None)
    np.testing.assert_array_equal(s.seen, STREAM.tasks[0].label_mask | STREAM.tasks[1].label_mask)
    assert leaves_equal(s.previous, moved(PARAMS))
    # One head for every class (class-incremental): only the classes trained on so far, not
    # the ones still to come, and not the label 0 of padding rows.
    one_head = OBJ._replace(label_masks=jnp.ones_like(OBJ.label_masks))
    reg = lwf(one_head)
    s = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(1, pad=3), None)
    assert np.flatnonzero(s.seen).tolist() == [2, 3]


def test_lwf_over_all_units_also_distils_the_low_scores_of_classes_still_to_come():
    """units="all", one head (class-incremental): both softmaxes over every output the batch
    trains, the new classes' included (van de Ven et al.'s default); nothing before a task ends."""
    one_head = OBJ._replace(label_masks=jnp.ones_like(OBJ.label_masks))
    strength, temp = 0.25, 2.0
    reg = lwf(one_head, strength=strength, temperature=temp, units="all")
    data, theta = task_data(1), moved(PARAMS)
    assert float(reg.penalty(theta, reg.init(PARAMS), data, None)[0]) == 0.0
    state = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), None)
    p = _softmax(np.asarray(MODEL.apply(PARAMS, data["x"])) / temp)
    q = _softmax(np.asarray(MODEL.apply(theta, data["x"])) / temp)
    kl = (p * (np.log(p) - np.log(q))).sum(-1).mean()
    value = float(reg.penalty(theta, state, data, None)[0])
    assert value == pytest.approx(strength * temp**2 * kl, rel=1e-4)
    seen_only = lwf(one_head, strength=strength, temperature=temp)
    state = seen_only.consolidate(seen_only.init(PARAMS), PARAMS, task_data(0), None)
    assert float(seen_only.penalty(theta, state, data, None)[0]) != pytest.approx(value, rel=1e-2)
    # A training restriction (train_outputs="seen") narrows both softmaxes with it.
    narrowed = {**data, "outputs": jnp.broadcast_to(jnp.arange(6) < 4, (len(data["y"]), 6))}
    p4, q4 = (_softmax(np.log(a[:, :4])) for a in (p, q))
    kl4 = (p4 * (np.log(p4) - np.log(q4))).sum(-1).mean()
    state = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), None)
    got = float(reg.penalty(theta, state, narrowed, None)[0])
    assert got == pytest.approx(strength * temp**2 * kl4, rel=1e-4)
