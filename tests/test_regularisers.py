"""One contract suite over every regulariser, jitted and not, plus closed forms for each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models
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
    registry,
    replay,
    si,
)
from continual.regularisers.dense_fisher import dense_layers

from regulariser_setup import (
    GROUPS,
    MODEL,
    OBJ,
    PARAMS,
    STREAM,
    X0,
    Y0,
    batch,
    leaves_equal,
    moved,
    opposing,
    task_data,
)

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
    "lwf_all": lambda: lwf(OBJ._replace(label_masks=jnp.ones_like(OBJ.label_masks)), units="all"),
    "agem": lambda: agem(OBJ, capacity=10, example_x=X0, example_y=Y0),
    "agem_balanced": lambda: agem(
        OBJ, 12, X0, Y0, batch_size=5, selection="class_balanced", per_class=1, groups=GROUPS
    ),
    "der": lambda: der(OBJ, capacity=10, example_x=X0, example_y=Y0, alpha=0.5),
    "der++_sampled": lambda: der(OBJ, 10, X0, Y0, alpha=0.3, beta=0.5, batch_size=6),
    "gem": lambda: gem(OBJ, num_tasks=3, memory_per_task=5, example_x=X0, example_y=Y0),
    "lwf+agem": lambda: chain(lwf(OBJ), agem(OBJ, capacity=10, example_x=X0, example_y=Y0)),
}
# The variants above, by the contract they keep (continual.regularisers.registry.CONTRACTS);
# every registered method runs too, as "registered:<name>" with its registered contract.
CONTRACT = {
    "naive": "none",
    **dict.fromkeys(
        ["l2", "ewc_separate", "ewc_online", "ewc_sampled", "ewc_empirical", "si", "mas"],
        "quadratic",
    ),
    **dict.fromkeys(["lwf", "lwf_all"], "anchored"),
    **dict.fromkeys(["agem", "agem_balanced", "gem", "lwf+agem"], "projection"),
}
CONTEXT = registry.context(OBJ, STREAM)


def _registered(name):
    """A registered method built as the runner builds it, with a memory the tiny stream fills."""
    small = {"capacity": 10, "memory_per_task": 5}
    spec = registry.methods()[name]
    return lambda: registry.build(
        name, CONTEXT, {k: v for k, v in small.items() if k in spec.defaults}
    )


for _name, _spec in registry.methods().items():
    FACTORIES[f"registered:{_name}"] = _registered(_name)
    CONTRACT[f"registered:{_name}"] = _spec.contract
CONTRACT.setdefault("lwf+agem", "projection")


def hooks(reg, jitted):
    fns = (reg.init, reg.penalty, reg.transform, reg.observe, reg.consolidate)
    return [jax.jit(f) if jitted else f for f in fns]


def _slot0(state):
    return jax.tree.map(lambda f: f[0], state.fisher), state.strength


def _doubled(field):  # c * sum Omega (theta - theta*)^2: gradient 2 c Omega (...)
    return lambda state: (jax.tree.map(lambda o: 2.0 * o, getattr(state, field)), state.strength)


# The F (and strength) of each quadratic variant's penalty, read from its state: its gradient at
# theta is strength * F * (theta - theta*) (separate EWC: its first slot, the one filled).
IMPORTANCE = {
    "l2": lambda state: (jax.tree.map(jnp.ones_like, PARAMS), state.strength),
    "ewc_online": lambda state: (state.fisher, state.strength),
    "si": _doubled("omega"),
    "mas": _doubled("omega"),
    "ewc_separate": _slot0,
    "ewc_sampled": _slot0,
    "ewc_empirical": _slot0,
    "registered:rwalk": _doubled("importance"),
}


def check_quadratic(penalty):
    """`penalty(theta)` is a diagonal quadratic bowl at PARAMS, known from its values alone:
    zero there, gradient linear and diagonal in d = theta - PARAMS, penalty = <gradient, d> / 2."""
    assert float(penalty(PARAMS)) == pytest.approx(0.0, abs=1e-12)  # zero at the anchor
    d = jax.tree.map(lambda a, b: a - b, moved(PARAMS), PARAMS)
    at = lambda scale, mask=None: jax.tree.map(  # noqa: E731
        lambda p, di: p + scale * di * (1.0 if mask is None else mask(di)), PARAMS, d
    )
    grad = jax.grad(penalty)
    g1, g2, g_neg = grad(at(1.0)), grad(at(2.0)), grad(at(-1.0))
    half = lambda di: (jnp.arange(di.size).reshape(di.shape) % 2).astype(di.dtype)  # noqa: E731
    g_half = grad(at(1.0, half))
    for a, b, c, h, di in zip(*map(jax.tree.leaves, (g1, g2, g_neg, g_half, d)), strict=True):
        np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(c, -a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(h, a * half(di), rtol=1e-5, atol=1e-7)  # diagonal
    leaves = zip(jax.tree.leaves(g1), jax.tree.leaves(d), strict=True)
    inner = sum(float(jnp.vdot(a, di)) for a, di in leaves)
    assert float(penalty(at(1.0))) == pytest.approx(inner / 2, rel=1e-5, abs=1e-9)


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
    contract = CONTRACT.get(name, "memory")
    if contract == "quadratic":
        check_quadratic(lambda p: penalty(p, state1, batch(), key)[0])
        if name in IMPORTANCE:  # and its F is the one the method says it keeps
            theta = moved(PARAMS)
            g = jax.grad(lambda p: penalty(p, state1, batch(), key)[0])(theta)
            f, lam = IMPORTANCE[name](state1)
            expected = jax.tree.map(lambda fi, t, a: lam * fi * (t - a), f, theta, PARAMS)
            for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(expected), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    elif contract == "anchored":
        assert float(penalty(PARAMS, state1, batch(), key)[0]) == pytest.approx(0.0, abs=1e-7)
        assert float(penalty(moved(PARAMS), state1, batch(), key)[0]) > 1e-4
    elif contract == "memory":
        value, _ = penalty(PARAMS, state1, batch(), key)
        assert float(value) > 0  # replay, DER: a loss on stored examples
    if contract == "projection":
        # Identity while the memory is empty; a gradient against task 0 changes once it is not.
        g = opposing()
        assert leaves_equal(transform(g, PARAMS, init(PARAMS), batch(), key), g)
        projected = transform(g, PARAMS, state1, batch(1), key)
        assert not leaves_equal(projected, g)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(projected))
        if name != "lwf+agem":
            assert float(penalty(moved(PARAMS), state2, batch(), key)[0]) == 0.0


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_sampled_fisher_averages_to_exact():
    data = task_data(2)
    exact = fisher_diagonal(OBJ, PARAMS, data, jax.random.key(0), "exact")
    draws = jax.vmap(lambda k: fisher_diagonal(OBJ, PARAMS, data, k, "sampled"))(
        jax.random.split(jax.random.key(5), 400)
    )
    mean = jax.tree.map(lambda d: d.mean(0), draws)
    for m, e in zip(jax.tree.leaves(mean), jax.tree.leaves(exact), strict=True):
        assert np.abs(m - e).sum() <= 0.1 * np.abs(e).sum()


@pytest.mark.slow
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
        (lambda: lwf(OBJ, units="old"), "units"),
        (lambda: lwf(OBJ, units="all"), "task-incremental"),
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
