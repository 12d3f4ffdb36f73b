"""Continual-learning metrics on hand-made matrices, off-by-one traps included."""

import pytest

from continual.evaluate import summarize

# matrix[i][j]: accuracy on task j after training task i.
M = [
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.95],
]
INITIAL = [0.1, 0.2, 0.25]


def test_average_is_the_final_row_mean():
    assert summarize(M)["average"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_bwt_averages_over_the_first_t_minus_1_tasks():
    # (0.5 - 0.9) and (0.7 - 0.8): the last task has no backward transfer and is not counted.
    assert summarize(M)["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_value_and_excludes_the_last_task():
    # Task 0: best of rows 0..1 is 0.9, final 0.5 -> 0.4; task 1: best of row 1 is 0.8 -> 0.1.
    assert summarize(M)["forgetting"] == pytest.approx((0.4 + 0.1) / 2)


def test_forgetting_uses_the_maximum_not_the_diagonal():
    m = [[0.5, 0.0], [0.9, 0.0]]
    m3 = [[0.5, 0.0, 0.0], [0.9, 0.0, 0.0], [0.6, 0.0, 0.0]]
    # T = 2 counts task 0 only: its best before the last row is 0.5 and it ends at 0.9.
    assert summarize(m)["forgetting"] == pytest.approx(0.5 - 0.9)
    s = summarize(m3)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert s["bwt"] == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_fwt_compares_before_training_with_the_untrained_model():
    # Task 1 before its training (row 0): 0.1 vs initial 0.2; task 2 (row 1): 0.3 vs 0.25.
    assert summarize(M, INITIAL)["fwt"] == pytest.approx(((0.1 - 0.2) + (0.3 - 0.25)) / 2)
    assert summarize(M)["fwt"] is None


def test_lower_is_better_flips_signs_so_meanings_stay():
    errors = [[0.1, 5.0], [2.0, 0.2]]
    s = summarize(errors, [9.0, 8.0], higher_is_better=False)
    assert s["average"] == pytest.approx(1.1)
    assert s["forgetting"] == pytest.approx(1.9)  # error on task 0 grew from 0.1 to 2.0
    assert s["bwt"] == pytest.approx(-1.9)  # old task got worse
    assert s["fwt"] == pytest.approx(3.0)  # task 1 error 5.0 before training vs 8.0 untrained


def test_single_task_and_joint_rows_define_only_the_average():
    assert summarize([[0.7]]) == {"average": 0.7, "forgetting": None, "bwt": None, "fwt": None}
    s = summarize([[0.8, 0.6, 0.7]], INITIAL)
    assert s["average"] == pytest.approx(0.7) and s["bwt"] is None and s["forgetting"] is None


def test_missing_entries_above_the_diagonal_leave_fwt_undefined_only():
    # train.evaluate = "seen": tasks not yet trained are not evaluated (NaN), nor is the
    # untrained model; average, forgetting and BWT read the lower triangle only.
    nan = float("nan")
    seen = [[0.9, nan, nan], [0.6, 0.8, nan], [0.5, 0.7, 0.95]]
    s, full = summarize(seen, [nan] * 3), summarize(M, INITIAL)
    assert {k: s[k] for k in ("average", "forgetting", "bwt")} == {
        k: full[k] for k in ("average", "forgetting", "bwt")
    }
    assert s["fwt"] is None
    assert summarize(seen)["fwt"] is None
    assert summarize(M, [0.1, nan, 0.25])["fwt"] is None  # one needed entry is enough


def _uneven_tasks():
    """Three tasks of 5, 12 and 3 test examples (padded to 12), a linear model, its params."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from continual.losses import Objective, categorical
    from continual.types import Task, stack_tasks

    rng = np.random.default_rng(0)
    tasks = []
    for i, n in enumerate((5, 12, 3)):
        split = {"x": rng.normal(size=(n, 4)).astype(np.float32), "y": rng.integers(0, 3, n)}
        mask = np.arange(6) // 3 == i % 2  # two heads: task-aware masks
        tasks.append(Task(i, f"t{i}", split, split, mask))
    test = jax.device_put(stack_tasks(tasks, "test"))
    params = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
    masks = jnp.asarray(np.stack([t.label_mask for t in tasks]))
    objective = Objective(lambda p, x: x @ p["w"], categorical, masks)
    return test, params, objective


@pytest.mark.parametrize("batch_size", [1, 4, 5, 11])
def test_evaluating_in_blocks_gives_each_tasks_mean(batch_size):
    import jax.numpy as jnp
    import numpy as np

    from continual.evaluate import evaluate_tasks

    test, params, objective = _uneven_tasks()
    agnostic = objective._replace(label_masks=jnp.ones_like(objective.label_masks))
    whole = np.asarray(evaluate_tasks((objective, agnostic), params, test))
    blocks = np.asarray(evaluate_tasks((objective, agnostic), params, test, None, batch_size))
    assert whole.shape == blocks.shape == (3, 2)
    np.testing.assert_allclose(blocks, whole, rtol=1e-6)
    # by hand: the accuracy over each task's own examples, padding left out
    for t in range(3):
        n = int(test.n[t])
        x, y = np.asarray(test.store)[np.asarray(test.ref)[t, :n]], np.asarray(test.y)[t, :n]
        logits = np.where(np.asarray(objective.label_masks[t]), x @ np.asarray(params["w"]), -1e9)
        assert blocks[t, 0] == pytest.approx(np.mean(logits.argmax(1) == y))
    one = np.asarray(evaluate_tasks(objective, params, test, None, batch_size))
    np.testing.assert_array_equal(one, blocks[:, 0])  # one objective: (T,)


def test_blocks_past_a_tasks_examples_and_unseen_tasks_are_not_evaluated():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from continual.evaluate import evaluate_tasks

    test, params, objective = _uneven_tasks()
    calls = []

    def counting(p, x):
        jax.debug.callback(lambda: calls.append(1))
        return x @ p["w"]

    counted = objective._replace(apply=counting)
    values = evaluate_tasks(counted, params, test, jnp.int32(1), 4)
    jax.effects_barrier()
    assert np.isnan(np.asarray(values)[2]) and not np.isnan(np.asarray(values)[:2]).any()
    assert len(calls) == 2 + 3  # task 0: 5 examples, 2 blocks of 4; task 1: 3; task 2 unseen
