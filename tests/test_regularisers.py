"""One contract suite over every regulariser, jitted and not, plus closed forms for each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models
from continual.losses import LIKELIHOODS, Objective
from continual.regularisers import (
    chain,
    ewc,
    fisher_diagonal,
    identity,
    l2,
    mas,
    output_sensitivity,
    replay,
    si,
)
from continual.streams import split_blobs
from continual.types import stack_tasks

STREAM = split_blobs(num_tasks=3, num_classes=6, dim=5, train_per_class=8, test_per_class=2)
TRAIN = stack_tasks(STREAM.tasks, "train")
MODEL = models.make("mlp", STREAM.num_outputs, widths=(7,))
OBJ = Objective(
    MODEL.apply,
    LIKELIHOODS["categorical"],
    jnp.asarray(np.stack([t.label_mask for t in STREAM.tasks])),
)
PARAMS = MODEL.init(jax.random.key(0), jnp.asarray(TRAIN.x[0, :1]))
X0, Y0 = TRAIN.x[0, 0], TRAIN.y[0, 0]


def task_data(t):
    return jax.tree.map(jnp.asarray, TRAIN.task_batch(t))


def batch(t=0):
    return jax.tree.map(lambda a: a[:4], task_data(t))


def moved(params, by=0.3):
    return jax.tree.map(lambda p: p + by * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)


FACTORIES = {
    "naive": lambda: identity(),
    "l2": lambda: l2(strength=2.0),
    "ewc_separate": lambda: ewc(OBJ, strength=3.0, mode="separate", num_tasks=3),
    "ewc_online": lambda: ewc(OBJ, strength=3.0, mode="online", gamma=0.5),
    "ewc_sampled": lambda: ewc(OBJ, strength=3.0, estimator="sampled", num_tasks=3),
    "ewc_empirical": lambda: ewc(
        OBJ, strength=3.0, estimator="empirical", num_samples=5, num_tasks=3
    ),
    "si": lambda: si(strength=2.0, damping=0.1),
    "mas": lambda: mas(OBJ, strength=1.5),
    "replay": lambda: replay(OBJ, capacity=10, example_x=X0, example_y=Y0, weight=0.5),
    "replay_sampled": lambda: replay(OBJ, capacity=10, example_x=X0, example_y=Y0, batch_size=6),
    "ewc+replay": lambda: chain(
        ewc(OBJ, num_tasks=3), replay(OBJ, capacity=10, example_x=X0, example_y=Y0)
    ),
}
QUADRATIC = {"l2", "ewc_separate", "ewc_online", "ewc_sampled", "ewc_empirical", "si", "mas"}


def hooks(reg, jitted):
    fns = (reg.init, reg.penalty, reg.transform, reg.observe, reg.consolidate)
    return [jax.jit(f) if jitted else f for f in fns]


def importance(name, state):
    """The F of a quadratic penalty, summed over slots, and its anchor (last slot)."""
    if name == "l2":
        return jax.tree.map(jnp.ones_like, PARAMS), state.strength
    if name == "ewc_online":
        return state.fisher, state.strength
    if name in ("si", "mas"):  # c * sum Omega (theta - theta*)^2: gradient 2 c Omega (...)
        return jax.tree.map(lambda o: 2.0 * o, state.omega), state.strength
    return jax.tree.map(lambda f: f[0], state.fisher), state.strength


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jitted(request):
    return request.param


@pytest.mark.parametrize("name", FACTORIES)
def test_contract(name, jitted):
    reg = FACTORIES[name]()
    init, penalty, transform, observe, consolidate = hooks(reg, jitted)
    key = jax.random.key(1)
    state = init(PARAMS)
    # No penalty before anything is consolidated.
    value, metrics = penalty(moved(PARAMS), state, batch(), key)
    assert float(value) == 0.0 and isinstance(metrics, dict)
    # Transform and observe keep structure.
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    assert jax.tree.structure(transform(grads, PARAMS, state, batch(), key)) == jax.tree.structure(
        grads
    )
    # Observed away from where it consolidates, so that SI's path integral is not zero.
    state = observe(state, moved(PARAMS, -0.1), grads, batch(), key)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
    state1 = consolidate(state, PARAMS, task_data(0), key)
    state2 = consolidate(state1, moved(PARAMS), task_data(1), key)
    # Shapes and dtypes never change across consolidations (nothing recompiles).
    for s in (state1, state2):
        assert jax.tree.map(lambda a: (a.shape, a.dtype), s) == shapes
    if name in QUADRATIC:
        value, _ = penalty(PARAMS, state1, batch(), key)
        assert float(value) == pytest.approx(0.0, abs=1e-12)  # zero at the anchor
        theta = moved(PARAMS)
        g = jax.grad(lambda p: penalty(p, state1, batch(), key)[0])(theta)
        f, lam = importance(name, state1)
        expected = jax.tree.map(lambda fi, t, a: lam * fi * (t - a), f, theta, PARAMS)
        for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    elif name != "naive":
        value, _ = penalty(PARAMS, state1, batch(), key)
        assert float(value) > 0  # replay: a loss on stored examples


def test_jit_and_eager_agree():
    for name, factory in FACTORIES.items():
        key = jax.random.key(2)
        outs = []
        for jitted in (False, True):
            init, penalty, _, _, consolidate = hooks(factory(), jitted)
            state = consolidate(init(PARAMS), PARAMS, task_data(0), key)
            outs.append(float(penalty(moved(PARAMS), state, batch(1), key)[0]))
        assert outs[0] == pytest.approx(outs[1], rel=1e-5), name


def test_chain_sums_penalties_and_keeps_states_apart():
    parts = [l2(strength=2.0), ewc(OBJ, strength=3.0, num_tasks=3)]
    both = chain(*parts)
    key = jax.random.key(3)
    state = both.consolidate(both.init(PARAMS), PARAMS, task_data(0), key)
    assert isinstance(state, tuple) and len(state) == 2
    keys = [jax.random.fold_in(key, i) for i in range(2)]
    alone = [
        p.consolidate(p.init(PARAMS), PARAMS, task_data(0), k)
        for p, k in zip(parts, keys, strict=True)
    ]
    for s, a in zip(state, alone, strict=True):
        assert all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(s), jax.tree.leaves(a), strict=True)
        )
    theta = moved(PARAMS)
    total, metrics = both.penalty(theta, state, batch(), key)
    separate = sum(
        float(p.penalty(theta, s, batch(), key)[0]) for p, s in zip(parts, state, strict=True)
    )
    assert float(total) == pytest.approx(separate, rel=1e-6)
    assert set(metrics) == {"l2/penalty", "ewc/penalty"}


def test_separate_mode_fills_one_slot_per_task_and_online_decays():
    key = jax.random.key(4)
    sep = ewc(OBJ, mode="separate", num_tasks=3)
    state = sep.init(PARAMS)
    for t in range(2):
        state = sep.consolidate(state, moved(PARAMS, 0.1 * t), task_data(t), key)
    kernel = state.fisher["params"]["out"]["kernel"]
    assert (kernel[0] > 0).any() and (kernel[1] > 0).any() and (kernel[2] == 0).all()
    assert int(state.count) == 2
    onl = ewc(OBJ, mode="online", gamma=0.5)
    s = onl.init(PARAMS)
    s = onl.consolidate(s, PARAMS, task_data(0), key)
    f0 = s.fisher
    s = onl.consolidate(s, PARAMS, task_data(0), key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 1.5 * b, rtol=1e-6), s.fisher, f0)


def _brute_fisher(estimator, data, key=None):
    """Per example, per class: explicit loops over examples and gradients (no vmap/jacrev)."""
    lik = OBJ.likelihood
    total = jax.tree.map(jnp.zeros_like, PARAMS)
    n = int(data["weight"].sum())
    for i in range(n):
        x, y, mask = data["x"][i], data["y"][i], OBJ.label_masks[data["task"][i]]
        out = MODEL.apply(PARAMS, x[None])[0]
        probs = jax.nn.softmax(jnp.where(mask, out, -1e9))
        classes = range(len(probs)) if estimator == "exact" else [y]
        for c in classes:
            g = jax.grad(lambda p, x=x, c=c, m=mask: lik.nll(MODEL.apply(p, x[None])[0], c, m))(
                PARAMS
            )
            w = probs[c] if estimator == "exact" else 1.0
            total = jax.tree.map(lambda t, gi, w=w: t + w * gi**2, total, g)
    return jax.tree.map(lambda t: t / n, total)


@pytest.mark.parametrize("estimator", ["exact", "empirical"])
def test_fisher_matches_brute_force(estimator):
    data = task_data(1)
    got = fisher_diagonal(OBJ, PARAMS, data, jax.random.key(0), estimator)
    want = _brute_fisher(estimator, data)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-8)


def test_sampled_fisher_averages_to_exact():
    data = task_data(2)
    exact = fisher_diagonal(OBJ, PARAMS, data, jax.random.key(0), "exact")
    draws = jax.vmap(lambda k: fisher_diagonal(OBJ, PARAMS, data, k, "sampled"))(
        jax.random.split(jax.random.key(5), 400)
    )
    mean = jax.tree.map(lambda d: d.mean(0), draws)
    for m, e in zip(jax.tree.leaves(mean), jax.tree.leaves(exact), strict=True):
        assert np.abs(m - e).sum() <= 0.1 * np.abs(e).sum()


def test_fisher_ignores_padding_and_subsamples():
    data = task_data(0)
    n = int(data["weight"].sum())
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros_like(a[:5])]), data)
    a = fisher_diagonal(OBJ, PARAMS, data, jax.random.key(0))
    b = fisher_diagonal(OBJ, PARAMS, padded, jax.random.key(0))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)
    sub = fisher_diagonal(OBJ, PARAMS, padded, jax.random.key(0), num_samples=n)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(sub), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)  # all valid ones, any order


def test_reservoir_holds_a_uniform_sample():
    data = task_data(0)  # 16 examples
    reg = replay(OBJ, capacity=4, example_x=X0, example_y=Y0)
    counts = np.zeros(16)
    xs = np.asarray(data["x"])
    fill = jax.jit(jax.vmap(lambda k: reg.consolidate(reg.init(PARAMS), PARAMS, data, k)))
    states = fill(jax.random.split(jax.random.key(0), 300))
    assert (np.asarray(states.size) == 4).all() and (np.asarray(states.seen) == 16).all()
    for buffer in np.asarray(states.x):
        for row in buffer:
            counts[np.flatnonzero((xs == row).all(1))[0]] += 1
    assert counts.sum() == 1200
    expected = 1200 / 16
    assert np.abs(counts - expected).max() < 0.45 * expected  # ~5 standard deviations


def test_reservoir_keeps_every_task_represented():
    reg = replay(OBJ, capacity=12, example_x=X0, example_y=Y0)
    s = reg.init(PARAMS)
    for t in range(3):
        s = reg.consolidate(s, PARAMS, task_data(t), jax.random.key(t))
    assert int(s.size) == 12 and int(s.seen) == 48
    assert set(np.asarray(s.task).tolist()) == {0, 1, 2}
    small = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), jax.random.key(0))
    assert int(small.size) == 12  # 16 offered, capacity 12


@pytest.mark.parametrize(
    "factory",
    [
        lambda: l2(strength=-1.0),
        lambda: ewc(OBJ, strength=-0.1),
        lambda: ewc(OBJ, gamma=-1.0),
        lambda: ewc(OBJ, estimator="nope"),
        lambda: ewc(OBJ, mode="nope"),
        lambda: replay(OBJ, capacity=0, example_x=X0, example_y=Y0),
        lambda: replay(OBJ, capacity=4, example_x=X0, example_y=Y0, weight=-1.0),
        lambda: l2(strength="big"),
        lambda: si(damping=-0.1),
        lambda: si(strength=-1.0),
    ],
)
def test_factories_reject_bad_hyperparameters(factory):
    with pytest.raises(ValueError):
        factory()


def test_si_importance_is_the_path_integral_over_the_task():
    reg = si(strength=1.0, damping=0.5)
    theta = [moved(PARAMS, by) for by in (0.0, 0.1, 0.3)]
    grads = [jax.tree.map(lambda p, k=k: jnp.sin(p + k), PARAMS) for k in (1.0, 2.0)]
    state = reg.init(theta[0])
    state = reg.observe(state, theta[0], grads[0], batch(), None)
    state = reg.observe(state, theta[1], grads[1], batch(), None)
    state = reg.consolidate(state, theta[2], task_data(0), None)
    for leaf in range(len(jax.tree.leaves(PARAMS))):
        t = [jax.tree.leaves(x)[leaf] for x in theta]
        g = [jax.tree.leaves(x)[leaf] for x in grads]
        w = -g[0] * (t[1] - t[0]) - g[1] * (t[2] - t[1])
        expected = w / ((t[2] - t[0]) ** 2 + 0.5)
        np.testing.assert_allclose(
            jax.tree.leaves(state.omega)[leaf], expected, rtol=1e-5, atol=1e-7
        )
    assert all(float(jnp.abs(w).max()) == 0 for w in jax.tree.leaves(state.w))  # restarted


def test_mas_importance_is_the_mean_absolute_output_norm_gradient():
    data = task_data(1)
    got = output_sensitivity(OBJ, PARAMS, data, jax.random.key(0))
    n = int(data["weight"].sum())
    total = jax.tree.map(jnp.zeros_like, PARAMS)
    for i in range(n):
        x, mask = data["x"][i], OBJ.label_masks[data["task"][i]]
        g = jax.grad(
            lambda p, x=x, m=mask: jnp.sum(jnp.where(m, MODEL.apply(p, x[None])[0], 0.0) ** 2)
        )(PARAMS)
        total = jax.tree.map(lambda t, gi: t + jnp.abs(gi), total, g)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(total), strict=True):
        np.testing.assert_allclose(a, b / n, rtol=2e-4, atol=1e-8)
    reg = mas(OBJ)
    s = reg.consolidate(reg.init(PARAMS), PARAMS, data, jax.random.key(0))
    s = reg.consolidate(s, PARAMS, data, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(s.omega), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, 2 * b, rtol=1e-5, atol=1e-8)  # importances accumulate
