"""Evaluation-only tasks (Task.eval_only): evaluated after every row, never trained, kept apart."""

import json
from dataclasses import replace

import numpy as np
import pytest

from continual import runner, streams
from continual.types import Results, Stream, Task, stack_tasks, union

METHODS = ["naive", "joint"]


def blobs(eval_only: int = 0, drop: int = 0, **kw) -> Stream:
    """split_blobs with its last `eval_only` tasks evaluation-only (no training split) and its
    last `drop` tasks removed."""
    s = streams.split_blobs(**kw)
    tasks = list(s.tasks[: len(s.tasks) - drop])
    for i in range(len(tasks) - eval_only, len(tasks)):
        empty = {k: v[:0] for k, v in tasks[i].train.items()}
        tasks[i] = tasks[i]._replace(train=empty, eval_only=True)
    return replace(s, tasks=tuple(tasks))


def config(evaluate="all", methods=METHODS, **stream):
    return {
        "seed": 0,
        "stream": {
            "name": "blobs_eval",
            "num_tasks": 4,
            "num_classes": 8,
            "dim": 6,
            "train_per_class": 20,
            "test_per_class": 10,
            "scenario": "class",  # class-IL: also a task-aware view
            **stream,
        },
        "model": {"name": "mlp", "widths": [16]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "evaluate": evaluate},
        "regularisers": {"ewc": {"strength": 1.0}},
        "methods": {"naive": {}, "ewc": {"use": ["ewc"]}, "joint": {"joint": True}},
        "run": list(methods),
    }


@pytest.fixture(scope="module")
def runs():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(streams.STREAMS, "blobs_eval", blobs)
        return {
            "with": runner.run(config(eval_only=1))[1],  # 3 trained tasks, the 4th evaluated
            "without": runner.run(config(methods=["naive"], drop=1))[1],  # the 3 tasks alone
        }


@pytest.fixture(scope="module")
def slow_runs():
    """EWC (which consolidates on the training rows), and train.evaluate = "seen"."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(streams.STREAMS, "blobs_eval", blobs)
        return {
            "with": runner.run(config(methods=["ewc", "joint"], eval_only=1))[1],
            "without": runner.run(config(methods=["ewc", "joint"], drop=1))[1],
            "seen": runner.run(config("seen", ["naive", "ewc"], eval_only=1))[1],
        }


def trained_part(r: Results) -> dict:
    d = r.to_json()
    d.pop("timing")
    d.pop("eval_only", None)
    return d


def test_an_eval_only_task_is_never_trained_and_leaves_the_trained_tasks_unchanged(runs):
    with_, without = runs["with"]["naive"], runs["without"]["naive"]
    # bit for bit: matrix, initial, summary, curves, views of the three trained tasks
    assert trained_part(with_) == trained_part(without)
    assert with_.tasks == without.tasks == ["blobs[0-1]", "blobs[2-3]", "blobs[4-5]"]
    assert without.eval_only is None
    assert "eval_only" not in without.to_json()


def test_its_column_is_recorded_before_training_and_after_every_chunk(runs):
    for name in METHODS:
        r = runs["with"][name]
        e = r.eval_only
        assert e["tasks"] == ["blobs[6-7]"]
        rows = 1 if name == "joint" else 3
        assert np.shape(e["matrix"]) == (rows, 1) and np.shape(e["initial"]) == (1,)
        assert np.shape(e["values"]) == (len(r.curves["step"]), 1)
        assert np.isfinite(e["values"]).all()
        assert e["values"][0] == e["initial"]
        ends = [i for i in range(1, len(r.curves["step"])) if r.curves["step"][i] % 20 == 0]
        if name != "joint":
            assert [e["values"][i] for i in ends] == e["matrix"]
        # the second reading (task-aware accuracy) of the same column
        view = e["views"]["task_aware"]
        assert np.shape(view["matrix"]) == (rows, 1) and np.isfinite(view["initial"]).all()
        # class-IL: a task never trained is never predicted, so its accuracy stays near 0
        assert max(e["matrix"][-1]) < 0.5 < r.matrix[-1][-1]


@pytest.mark.slow
def test_a_regulariser_and_joint_never_train_an_eval_only_task(slow_runs):
    for name in ("ewc", "joint"):
        assert trained_part(slow_runs["with"][name]) == trained_part(slow_runs["without"][name])
    assert np.shape(slow_runs["with"]["ewc"].eval_only["matrix"]) == (3, 1)
    assert np.shape(slow_runs["with"]["joint"].eval_only["matrix"]) == (1, 1)


@pytest.mark.slow
def test_seen_evaluates_an_eval_only_task_always(runs, slow_runs):
    for name in ("naive", "ewc"):
        seen = slow_runs["seen"][name]
        full = (runs if name == "naive" else slow_runs)["with"][name]
        assert np.isnan(seen.initial).all()  # no trained task is seen before training
        np.testing.assert_array_equal(seen.eval_only["initial"], full.eval_only["initial"])
        np.testing.assert_array_equal(seen.eval_only["values"], full.eval_only["values"])
        np.testing.assert_array_equal(seen.eval_only["matrix"], full.eval_only["matrix"])
        m = np.array(seen.matrix)
        assert np.isnan(m[np.triu_indices(3, 1)]).all()
        np.testing.assert_array_equal(m[-1], full.matrix[-1])


def test_summaries_read_the_trained_tasks_only(runs):
    r = runs["with"]["naive"]
    assert np.shape(r.matrix) == (3, 3)
    assert r.summary["average"] == pytest.approx(np.mean(r.matrix[-1]))
    assert r.rows == r.tasks
    assert runs["with"]["joint"].rows == ["joint"]
    assert Results.from_json(r.to_json()).to_json() == r.to_json()


@pytest.mark.slow
def test_results_json_round_trip(slow_runs):
    r = slow_runs["seen"]["naive"]
    text = json.dumps(r.to_json(), allow_nan=False)  # NaN written as null
    back = Results.from_json(json.loads(text))
    assert back.eval_only["tasks"] == r.eval_only["tasks"]
    np.testing.assert_array_equal(back.eval_only["values"], r.eval_only["values"])
    assert np.isnan(back.initial).all()
    assert back.to_json() == r.to_json()


def test_stacking_leaves_eval_only_tasks_out_of_training():
    s = blobs(eval_only=2, num_tasks=4, num_classes=8, dim=3, train_per_class=5, test_per_class=4)
    assert [t.name for t in s.trained_tasks] == ["blobs[0-1]", "blobs[2-3]"]
    assert [t.name for t in s.eval_tasks] == ["blobs[4-5]", "blobs[6-7]"]
    train, test = stack_tasks(s.tasks, "train"), stack_tasks(s.tasks, "test")
    assert train.num_rows == 2 and train.eval_only is None
    assert test.num_rows == 4 and test.eval_only.tolist() == [False, False, True, True]
    joint = union(train)
    assert set(np.unique(joint.y[0, : joint.n[0]]).tolist()) == {0, 1, 2, 3}
    plain = stack_tasks(streams.split_blobs(num_tasks=2, dim=3).tasks, "test")
    assert plain.eval_only is None  # a stream without them: the same TaskData as before


def test_bad_orders_are_one_line_errors():
    s = streams.split_blobs(num_tasks=3, dim=3, num_classes=6)
    first = s.tasks[0]._replace(eval_only=True)
    with pytest.raises(ValueError, match="first task must be trained"):
        replace(s, tasks=(first, *s.tasks[1:]))
    middle = s.tasks[1]._replace(eval_only=True)
    with pytest.raises(ValueError, match="must follow every trained task"):
        replace(s, tasks=(s.tasks[0], middle, s.tasks[2]))
    assert Task(0, "a", {}, {}, np.ones(1, bool)).eval_only is False
