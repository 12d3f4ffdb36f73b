"""One contract suite over every regulariser, jitted and not, plus closed forms for each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models, runner
from continual.losses import LIKELIHOODS, Objective
from continual.regularisers import (
    agem,
    chain,
    der,
    ewc,
    fisher_diagonal,
    gem,
    identity,
    l2,
    lwf,
    mas,
    output_sensitivity,
    replay,
    si,
)
from continual.regularisers.agem import project, tree_dot
from continual.regularisers.dense_fisher import dense_layers
from continual.regularisers.gem import project_cone
from continual.regularisers.replay import sample_buffer
from continual.streams import split_blobs

STREAM = split_blobs(num_tasks=3, num_classes=6, dim=5, train_per_class=8, test_per_class=2)
MODEL = models.make("mlp", STREAM.num_outputs, widths=(7,))
OBJ = Objective(
    MODEL.apply,
    LIKELIHOODS["categorical"],
    jnp.asarray(np.stack([t.label_mask for t in STREAM.tasks])),
)
PARAMS = MODEL.init(jax.random.key(0), jnp.asarray(STREAM.tasks[0].train["x"][:1]))
X0, Y0 = STREAM.tasks[0].train["x"][0], STREAM.tasks[0].train["y"][0]
GROUPS = [(t.id, int(c)) for t in STREAM.tasks for c in np.unique(t.train["y"])]  # (task, class)


def task_data(t, pad=0):
    """Task t's whole training split as one batch, with `pad` zero-weight rows at the end."""
    train = STREAM.tasks[t].train
    n = len(train["x"])
    data = {
        "x": train["x"],
        "y": train["y"],
        "task": np.full((n,), t, np.int32),
        "weight": np.ones((n,), np.float32),
    }
    return {k: jnp.asarray(np.concatenate([v, np.zeros_like(v[:pad])])) for k, v in data.items()}


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
    "replay_balanced": lambda: replay(
        OBJ, 12, X0, Y0, batch_size=6, selection="class_balanced", groups=GROUPS
    ),
    "lwf": lambda: lwf(OBJ, strength=2.0, temperature=3.0),
    "agem": lambda: agem(OBJ, capacity=10, example_x=X0, example_y=Y0),
    "agem_balanced": lambda: agem(
        OBJ, 12, X0, Y0, batch_size=5, selection="class_balanced", per_class=1, groups=GROUPS
    ),
    "der": lambda: der(OBJ, capacity=10, example_x=X0, example_y=Y0, alpha=0.5),
    "der++_sampled": lambda: der(OBJ, 10, X0, Y0, alpha=0.3, beta=0.5, batch_size=6),
    "gem": lambda: gem(OBJ, num_tasks=3, memory_per_task=5, example_x=X0, example_y=Y0),
    "lwf+agem": lambda: chain(lwf(OBJ), agem(OBJ, capacity=10, example_x=X0, example_y=Y0)),
}
QUADRATIC = {"l2", "ewc_separate", "ewc_online", "ewc_sampled", "ewc_empirical", "si", "mas"}
ANCHORED = {"lwf", "lwf+agem"}  # zero at the parameters it consolidated, positive elsewhere
PROJECTIONS = {"agem", "agem_balanced", "gem", "lwf+agem"}  # transform the gradient


def opposing():
    """A gradient that increases task 0's loss (any memory of task 0 must change it)."""
    return jax.tree.map(jnp.negative, jax.grad(OBJ.loss)(PARAMS, task_data(0)))


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
    elif name in ANCHORED:
        assert float(penalty(PARAMS, state1, batch(), key)[0]) == pytest.approx(0.0, abs=1e-7)
        assert float(penalty(moved(PARAMS), state1, batch(), key)[0]) > 1e-4
    elif name not in PROJECTIONS and name != "naive":
        value, _ = penalty(PARAMS, state1, batch(), key)
        assert float(value) > 0  # replay, DER: a loss on stored examples
    if name in PROJECTIONS:
        # Identity while the memory is empty; a gradient against task 0 changes once it is not.
        g = opposing()
        assert leaves_equal(transform(g, PARAMS, init(PARAMS), batch(), key), g)
        projected = transform(g, PARAMS, state1, batch(1), key)
        assert not leaves_equal(projected, g)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(projected))
        if name != "lwf+agem":
            assert float(penalty(moved(PARAMS), state2, batch(), key)[0]) == 0.0


def leaves_equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_jit_and_eager_agree():
    grads = opposing()
    for name, factory in FACTORIES.items():
        key = jax.random.key(2)
        outs = []
        for jitted in (False, True):
            init, penalty, transform, observe, consolidate = hooks(factory(), jitted)
            state = observe(init(PARAMS), moved(PARAMS, -0.1), grads, batch(2), key)
            state = consolidate(state, PARAMS, task_data(0), key)
            value = penalty(moved(PARAMS), state, batch(1), key)[0]
            outs.append([value, *jax.tree.leaves(transform(grads, PARAMS, state, batch(1), key))])
        for eager, jit in zip(*outs, strict=True):
            np.testing.assert_allclose(eager, jit, rtol=1e-5, atol=1e-7, err_msg=name)


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


def test_exact_fisher_of_dense_networks_needs_no_per_example_gradients():
    # test_fisher_matches_brute_force covers the numbers (the MLP takes this path); here, which
    # models take it: every parameter in a Dense layer on (batch, features) inputs.
    x = jnp.asarray(STREAM.tasks[0].train["x"][:1])
    assert dense_layers(MODEL.apply, PARAMS, x) == [("hidden_0",), ("out",)]
    cnn = models.make("cnn", 6, channels=[2], kernels=[3], strides=[1])
    assert dense_layers(cnn.apply, cnn.init(jax.random.key(0), x), x) is None


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


@pytest.mark.parametrize("method", ["replay", "lwf"])
def test_scaled_by_tasks_weighs_the_old_tasks_by_their_number(method):
    if method == "replay":
        plain = replay(OBJ, capacity=10, example_x=X0, example_y=Y0, weight=0.5)
        scaled = replay(
            OBJ, capacity=10, example_x=X0, example_y=Y0, weight=0.5, scale_by_tasks=True
        )
    else:
        plain, scaled = lwf(OBJ, strength=0.5), lwf(OBJ, strength=0.5, scale_by_tasks=True)
    assert float(scaled.penalty(PARAMS, scaled.init(PARAMS), batch(0), jax.random.key(0))[0]) == 0
    a, b = plain.init(PARAMS), scaled.init(PARAMS)
    for t in range(2):  # after two tasks: 2 earlier tasks while training the third
        a = plain.consolidate(a, PARAMS, task_data(t), jax.random.key(t))
        b = scaled.consolidate(b, PARAMS, task_data(t), jax.random.key(t))
    moved_params = moved(PARAMS)  # LwF is zero at the stored model
    penalty_a = float(plain.penalty(moved_params, a, batch(2), jax.random.key(9))[0])
    penalty_b = float(scaled.penalty(moved_params, b, batch(2), jax.random.key(9))[0])
    assert penalty_a > 0 and np.isclose(penalty_b, 2 * penalty_a, rtol=1e-6)


def test_reservoir_holds_a_uniform_sample():
    data = task_data(0)  # 16 examples
    reg = replay(OBJ, capacity=4, example_x=X0, example_y=Y0)
    counts = np.zeros(16)
    xs = np.asarray(data["x"])
    fill = jax.jit(jax.vmap(lambda k: reg.consolidate(reg.init(PARAMS), PARAMS, data, k)))
    states = fill(jax.random.split(jax.random.key(0), 300))
    memory = states.memory
    assert np.asarray(memory.filled).all() and (np.asarray(memory.seen) == 16).all()
    for buffer in np.asarray(memory.rows["x"]):
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
    assert np.asarray(s.memory.filled).all() and int(s.memory.seen) == 48
    assert set(np.asarray(s.memory.rows["task"]).tolist()) == {0, 1, 2}
    small = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), jax.random.key(0))
    assert np.asarray(small.memory.filled).all()  # 16 offered, capacity 12
    five = jax.tree.map(lambda a: a[:5], task_data(0))
    half = reg.consolidate(reg.init(PARAMS), PARAMS, five, jax.random.key(0))
    assert np.asarray(half.memory.filled).tolist() == [True] * 5 + [False] * 7


@pytest.mark.parametrize(
    ("factory", "names"),
    [
        (lambda: l2(strength=-1.0), "strength"),
        (lambda: ewc(OBJ, strength=-0.1), "strength"),
        (lambda: ewc(OBJ, gamma=-1.0), "gamma"),
        (lambda: ewc(OBJ, estimator="nope"), "estimator"),
        (lambda: ewc(OBJ, mode="nope"), "mode"),
        (lambda: replay(OBJ, capacity=0, example_x=X0, example_y=Y0), "capacity"),
        (lambda: replay(OBJ, capacity=4, example_x=X0, example_y=Y0, weight=-1.0), "weight"),
        (lambda: l2(strength="big"), "strength"),
        (lambda: si(damping=-0.1), "damping"),
        (lambda: si(strength=-1.0), "strength"),
        (lambda: replay(OBJ, 4, X0, Y0, selection="nope"), "selection"),
        (lambda: replay(OBJ, 4, X0, Y0, per_class=2), "per_class"),
        (lambda: replay(OBJ, 12, X0, Y0, selection="class_balanced"), "groups"),
        (lambda: replay(OBJ, 5, X0, Y0, selection="class_balanced", groups=GROUPS), "capacity"),
        (
            lambda: replay(OBJ, 12, X0, Y0, selection="class_balanced", groups=GROUPS, per_class=3),
            "per_class",
        ),
        (lambda: replay(OBJ, 12, X0, 0.5, selection="class_balanced", groups=GROUPS), "labels"),
        (lambda: lwf(OBJ, strength=-1.0), "strength"),
        (lambda: lwf(OBJ, temperature=-2.0), "temperature"),
        (lambda: lwf(OBJ, temperature=0.0), "temperature"),
        (lambda: agem(OBJ, capacity=0, example_x=X0, example_y=Y0), "capacity"),
        (lambda: agem(OBJ, 4, X0, Y0, batch_size=-1), "batch_size"),
        (lambda: der(OBJ, capacity=0, example_x=X0, example_y=Y0), "capacity"),
        (lambda: der(OBJ, 4, X0, Y0, alpha=-0.5), "alpha"),
        (lambda: der(OBJ, 4, X0, Y0, beta=float("nan")), "beta"),
        (lambda: der(OBJ, 4, X0, Y0, batch_size=2.5), "batch_size"),
        (lambda: gem(OBJ, 3, 5, X0, Y0, margin=-0.5), "margin"),
        (lambda: gem(OBJ, 3, 0, X0, Y0), "memory_per_task"),
        (lambda: gem(OBJ, 0, 5, X0, Y0), "num_tasks"),
        (lambda: gem(OBJ, 3, 5, X0, Y0, sweeps=0), "sweeps"),
    ],
)
def test_factories_reject_bad_hyperparameters(factory, names):
    with pytest.raises(ValueError, match=names):
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


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


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


def test_agem_projection_closed_form():
    g = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
    r = {"a": jnp.array([-1.0, 1.0]), "b": jnp.array([[2.0]])}  # g . r = -2, r . r = 6
    got = project(g, r)
    want = {"a": jnp.array([1.0 - 1 / 3, -2.0 + 1 / 3]), "b": jnp.array([[0.5 + 2 / 3]])}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(tree_dot(got, r)) == pytest.approx(0.0, abs=1e-6)
    same = jax.tree.map(jnp.negative, r)
    for aligned in (jax.tree.map(lambda x: 2 * x, r), jax.tree.map(jnp.zeros_like, r)):
        assert leaves_equal(project(aligned, r), aligned)  # g . r >= 0: unchanged
    assert leaves_equal(project(same, jax.tree.map(jnp.zeros_like, r)), same)  # empty memory


def test_agem_reference_is_the_memory_gradient():
    reg = agem(OBJ, capacity=10, example_x=X0, example_y=Y0)
    s = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), jax.random.key(0))
    rows = {k: v[np.asarray(s.memory.filled)] for k, v in s.memory.rows.items()}
    ref = jax.grad(OBJ.loss)(PARAMS, {**rows, "weight": jnp.ones((10,))})
    g = opposing()
    assert float(tree_dot(g, ref)) < 0
    got = reg.transform(g, PARAMS, s, batch(1), jax.random.key(1))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(project(g, ref)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(tree_dot(got, ref)) >= -1e-5 * float(tree_dot(ref, ref))


def test_der_stores_the_model_outputs_and_matches_them():
    alpha, beta = 0.7, 0.4
    reg = der(OBJ, capacity=6, example_x=X0, example_y=Y0, alpha=alpha, beta=beta)
    theta = moved(PARAMS, -0.2)
    s = reg.observe(reg.init(PARAMS), theta, None, batch(0), jax.random.key(0))
    mem = s.memory
    assert int(mem.seen) == 4 and np.asarray(mem.filled).tolist() == [True] * 4 + [False] * 2
    x, out = mem.rows["x"][:4], mem.rows["out"][:4]
    np.testing.assert_allclose(out, MODEL.apply(theta, x), rtol=1e-6, atol=1e-7)  # at insertion
    order = [np.flatnonzero((np.asarray(batch(0)["x"]) == row).all(1))[0] for row in np.asarray(x)]
    assert sorted(order) == [0, 1, 2, 3]  # each example of the batch once
    np.testing.assert_array_equal(mem.rows["y"][:4], np.asarray(batch(0)["y"])[order])
    rows = {"x": x, "y": mem.rows["y"][:4], "task": mem.rows["task"][:4], "weight": jnp.ones(4)}
    want_mse = float(((MODEL.apply(PARAMS, x) - out) ** 2).mean())
    want = alpha * want_mse + beta * float(OBJ.loss(PARAMS, rows))
    value, metrics = reg.penalty(PARAMS, s, batch(1), jax.random.key(2))
    assert float(value) == pytest.approx(want, rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(want_mse, rel=1e-5)
    assert float(reg.penalty(theta, s, batch(1), jax.random.key(3))[1]["mse"]) == 0.0
    for t in (1, 2):  # a reservoir over the steps: every batch offered
        s = reg.observe(s, theta, None, batch(t), jax.random.key(t))
    assert int(s.memory.seen) == 12 and np.asarray(s.memory.filled).all()


def _group_rows(memory):
    filled = np.asarray(memory.filled)
    return [
        (int(t), int(y), tuple(x))
        for t, y, x, f in zip(
            np.asarray(memory.rows["task"]),
            np.asarray(memory.rows["y"]),
            np.asarray(memory.rows["x"]),
            filled,
            strict=True,
        )
        if f
    ]


def test_class_balanced_memory_holds_per_class_of_each_group_seen():
    reg = replay(OBJ, 18, X0, Y0, selection="class_balanced", per_class=3, groups=GROUPS)
    s = reg.init(PARAMS)
    assert s.memory.filled.shape == (18,)
    for t in (0, 1):
        s = reg.consolidate(s, PARAMS, task_data(t, pad=4), jax.random.key(t))
    rows = _group_rows(s.memory)
    for t, c in GROUPS:
        ours = [x for (rt, ry, x) in rows if (rt, ry) == (t, c)]
        assert len(ours) == (3 if t < 2 else 0)
        train = STREAM.tasks[t].train
        examples = {tuple(x) for x in train["x"][train["y"] == c]}
        assert len(set(ours)) == len(ours) and set(ours) <= examples  # distinct, of that group
    # Fewer examples than slots: the group keeps what there is; other groups' slots stay.
    few = jax.tree.map(lambda a: a[:5], task_data(2))
    s = reg.consolidate(s, PARAMS, few, jax.random.key(5))
    got = {g: sum((t, y) == g for t, y, _ in _group_rows(s.memory)) for g in GROUPS}
    want = {(t, int(c)): 3 for t in (0, 1) for c in np.unique(STREAM.tasks[t].train["y"])}
    for c, k in zip(*np.unique(STREAM.tasks[2].train["y"][:5], return_counts=True), strict=True):
        want[(2, int(c))] = min(int(k), 3)
    assert got == {g: want.get(g, 0) for g in GROUPS}
    assert int(s.memory.seen) == 37


def test_class_balanced_choice_is_uniform_within_a_group():
    data = task_data(0)
    reg = replay(OBJ, 12, X0, Y0, selection="class_balanced", per_class=2, groups=GROUPS)
    fill = jax.jit(jax.vmap(lambda k: reg.consolidate(reg.init(PARAMS), PARAMS, data, k)))
    memory = fill(jax.random.split(jax.random.key(0), 400)).memory
    xs = np.asarray(data["x"])
    counts = np.zeros(len(xs))
    for buffer, filled in zip(np.asarray(memory.rows["x"]), np.asarray(memory.filled), strict=True):
        assert filled.sum() == 4  # two groups of task 0, two slots each
        for row in buffer[filled]:
            counts[np.flatnonzero((xs == row).all(1))[0]] += 1
    expected = 400 * 2 / 8  # 8 examples per class
    assert np.abs(counts - expected).max() < 0.4 * expected


def test_memory_samples_draw_only_filled_slots():
    reg = replay(OBJ, 12, X0, Y0, selection="class_balanced", per_class=2, groups=GROUPS)
    s = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(1), jax.random.key(0))
    assert np.asarray(s.memory.filled).tolist() == [False] * 4 + [True] * 4 + [False] * 4
    sample = sample_buffer(s.memory, jax.random.key(1), 64)
    assert set(np.asarray(sample["task"]).tolist()) == {1}
    assert np.asarray(sample["weight"]).min() == 1.0
    empty = sample_buffer(reg.init(PARAMS).memory, jax.random.key(1), 8)
    assert np.asarray(empty["weight"]).max() == 0.0
    # The replay loss over the whole memory is the loss on its filled slots only.
    whole = replay(OBJ, 12, X0, Y0, selection="class_balanced", per_class=2, groups=GROUPS)
    rows = {k: v[4:8] for k, v in s.memory.rows.items()}
    want = OBJ.loss(PARAMS, {**rows, "weight": jnp.ones(4)})
    assert float(whole.penalty(PARAMS, s, None, None)[0]) == pytest.approx(float(want), rel=1e-6)


def test_runner_builds_class_balanced_groups_from_the_stream():
    build = runner.REGULARISERS["replay"]
    reg = build(OBJ, STREAM, None, capacity=12, selection="class_balanced")
    assert reg.init(PARAMS).memory.filled.shape == (12,)  # 6 (task, class) groups x 2
    s = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(2), jax.random.key(0))
    assert sorted({(t, y) for t, y, _ in _group_rows(s.memory)}) == GROUPS[4:]
    derpp = runner.REGULARISERS["derpp"](OBJ, STREAM, None, capacity=8)
    assert float(derpp.init(PARAMS).beta) == 0.5
    assert float(runner.REGULARISERS["der"](OBJ, STREAM, None, capacity=8).init(PARAMS).beta) == 0


def _constraints(rng, k, shapes=((3, 2), (4,))):
    return {
        f"w{i}": jnp.asarray(rng.normal(size=(k, *s)), jnp.float32) for i, s in enumerate(shapes)
    }


def _flat(tree):
    return np.concatenate([np.asarray(leaf).reshape(-1) for leaf in jax.tree.leaves(tree)])


def test_gem_with_one_constraint_is_the_agem_projection():
    rng = np.random.default_rng(0)
    c = _constraints(rng, 1)
    ref = jax.tree.map(lambda a: a[0], c)
    g = jax.tree.map(lambda a: -a + 0.3, ref)
    assert float(tree_dot(g, ref)) < 0
    got = project_cone(g, c, jnp.array([True]), 0.0, 1)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(project(g, ref)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gem_with_orthogonal_constraints_projects_on_each():
    c = {"w": jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -3.0]])}
    g = {"w": jnp.array([-1.0, -4.0, -2.0])}
    # Both first constraints violated, the third satisfied (g . c3 = 6) but inactive anyway.
    got = project_cone(g, c, jnp.array([True, True, False]), 0.0, 1)
    np.testing.assert_allclose(got["w"], [0.0, 0.0, -2.0], atol=1e-6)
    got = project_cone(g, c, jnp.array([True, True, True]), 0.0, 1)
    np.testing.assert_allclose(got["w"], [0.0, 0.0, -2.0], atol=1e-6)
    fine = {"w": jnp.array([1.0, 1.0, -1.0])}
    assert leaves_equal(project_cone(fine, c, jnp.array([True, True, True]), 0.5, 5), fine)


def test_gem_projection_solves_the_quadratic_program():
    rng = np.random.default_rng(1)
    for trial in range(6):
        c = _constraints(rng, 4)
        if trial % 2:  # correlated task gradients (cosine about 0.5) converge slower
            c = jax.tree.map(lambda a: (a + a.mean(0, keepdims=True) * 2.0) / 3.0**0.5, c)
        g = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape[1:]), jnp.float32), c)
        g = jax.tree.map(lambda x, a: x - a.mean(0), g, c)  # against them on average
        active = jnp.array([True, True, True, trial == 0])
        z = _flat(project_cone(g, c, active, 0.0, 50))  # gem's default number of sweeps
        rows = np.stack([_flat(jax.tree.map(lambda a, i=i: a[i], c)) for i in range(4)])
        rows = rows[np.asarray(active)]
        gz, v = rows @ z, np.linalg.lstsq(rows.T, z - _flat(g), rcond=None)[0]
        assert (rows @ _flat(g) < 0).any()  # something to project
        tol = 1e-4 * np.abs(rows).sum()
        # KKT: z - g = G'v with v >= 0, G z >= 0, and v_k (G z)_k = 0 (the closest such z).
        np.testing.assert_allclose(rows.T @ v, z - _flat(g), atol=tol)
        assert (gz >= -tol).all() and (v >= -tol).all() and (np.abs(v * gz) <= tol).all()


def test_gem_keeps_one_memory_per_task_and_projects_with_them():
    reg = gem(OBJ, num_tasks=3, memory_per_task=5, example_x=X0, example_y=Y0, margin=0.0)
    s = reg.init(PARAMS)
    for t in (0, 1):
        s = reg.consolidate(s, moved(PARAMS, 0.1 * t), task_data(t, pad=3), jax.random.key(t))
    assert int(s.count) == 2
    np.testing.assert_array_equal(s.filled, [[True] * 5, [True] * 5, [False] * 5])
    for t in (0, 1):
        xs = [tuple(x) for x in np.asarray(s.memory["x"][t])]
        assert len(set(xs)) == 5 and set(xs) <= {tuple(x) for x in STREAM.tasks[t].train["x"]}
        assert (np.asarray(s.memory["task"][t]) == t).all()
    per_task = [
        jax.grad(OBJ.loss)(
            PARAMS, {**jax.tree.map(lambda a, t=t: a[t], s.memory), "weight": jnp.ones(5)}
        )
        for t in (0, 1)
    ]
    g = opposing()
    got = reg.transform(g, PARAMS, s, batch(2), None)
    for ref in per_task:
        assert float(tree_dot(got, ref)) >= -1e-4 * float(tree_dot(ref, ref))
    assert not leaves_equal(got, g)


@pytest.mark.parametrize(
    "pair",
    [
        (lambda: lwf(OBJ, 1.0, 2.0), lambda: lwf(OBJ, 3.0, 5.0)),
        (lambda: der(OBJ, 6, X0, Y0, alpha=0.1), lambda: der(OBJ, 6, X0, Y0, 0.5, beta=0.5)),
        (lambda: gem(OBJ, 3, 4, X0, Y0), lambda: gem(OBJ, 3, 4, X0, Y0, margin=0.5)),
        (
            lambda: replay(OBJ, 12, X0, Y0, selection="class_balanced", groups=GROUPS),
            lambda: replay(OBJ, 12, X0, Y0, 3.0, selection="class_balanced", groups=GROUPS),
        ),
    ],
    ids=["lwf", "der", "gem", "replay_balanced"],
)
def test_continuous_hyperparameters_are_state_leaves(pair):
    """Two values of a sweepable hyperparameter give one program (a sweep stacks them)."""
    a, b = (f() for f in pair)
    key, g = jax.random.key(0), opposing()
    texts = []
    for reg in (a, b):
        state = reg.init(PARAMS)
        texts.append(
            [
                str(jax.make_jaxpr(reg.penalty)(PARAMS, state, batch(), key)),
                str(jax.make_jaxpr(reg.transform)(g, PARAMS, state, batch(), key)),
                str(jax.make_jaxpr(reg.observe)(state, PARAMS, g, batch(), key)),
                str(jax.make_jaxpr(reg.consolidate)(state, PARAMS, task_data(0), key)),
            ]
        )
    assert texts[0] == texts[1]
    assert not leaves_equal(a.init(PARAMS), b.init(PARAMS))
