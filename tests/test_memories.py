"""Episodic-memory methods: replay (reservoir, class-balanced), A-GEM, GEM, DER."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual.regularisers import (
    agem,
    der,
    gem,
    lwf,
    registry,
    replay,
)
from continual.regularisers.agem import project, tree_dot
from continual.regularisers.gem import project_cone
from continual.regularisers.replay import sample_buffer

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert float(whole.penalty(PARAMS, s, {}, None)[0]) == pytest.approx(float(want), rel=1e-6)


def test_runner_builds_class_balanced_groups_from_the_stream():
    context = registry.context(OBJ, STREAM)
    reg = registry.build("replay", context, {"capacity": 12, "selection": "class_balanced"})
    assert reg.init(PARAMS).memory.filled.shape == (12,)  # 6 (task, class) groups x 2
    s = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(2), jax.random.key(0))
    assert sorted({(t, y) for t, y, _ in _group_rows(s.memory)}) == GROUPS[4:]
    derpp = registry.build("derpp", context, {"capacity": 8})
    assert float(derpp.init(PARAMS).beta) == 0.5
    assert float(registry.build("der", context, {"capacity": 8}).init(PARAMS).beta) == 0


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


@pytest.mark.slow
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
