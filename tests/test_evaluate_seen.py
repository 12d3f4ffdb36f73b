"""train.evaluate = "seen": only the tasks seen so far are evaluated; the rest is missing (null)."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import plots, runner
from continual import results as res
from continual import sweep as sw
from continual.config import ConfigError
from continual.evaluate import evaluate_tasks
from continual.loop import Interrupted
from continual.types import Results

METHODS = ["naive", "ewc", "joint"]
T = 3


def tiny_config(evaluate="seen"):
    return {
        "seed": 0,
        "stream": {
            "name": "split_blobs",
            "num_tasks": T,
            "num_classes": 2 * T,
            "dim": 6,
            "train_per_class": 20,
            "test_per_class": 10,
            "scenario": "class",  # class-IL: also a task-aware view
        },
        "model": {"name": "mlp", "widths": [16]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "train": {"steps": 40, "batch_size": 8, "eval_every": 20, "evaluate": evaluate},
        "regularisers": {"ewc": {"strength": 1.0}},
        "methods": {"naive": {}, "ewc": {"use": ["ewc"]}, "joint": {"joint": True}},
        "checkpoint": {"enabled": True, "every_chunks": 1, "keep": 3},
        "run": METHODS,
    }


def strict_loads(text: str):
    """json.loads that rejects NaN and Infinity (which are not JSON)."""

    def bad(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=bad)


def comparable(r: Results) -> dict:
    d = r.to_json()
    d.pop("timing")  # wall-clock seconds are the only numbers allowed to differ
    return d


@pytest.fixture(scope="module")
def both():
    return {ev: runner.run(tiny_config(ev))[1] for ev in ("all", "seen")}


@pytest.mark.slow
def test_seen_gives_the_lower_triangle_and_final_row_of_all(both):
    for name in ("naive", "ewc"):
        full, seen = np.array(both["all"][name].matrix), np.array(both["seen"][name].matrix)
        lower = np.tril_indices(T)
        np.testing.assert_array_equal(seen[lower], full[lower])  # bit for bit
        np.testing.assert_array_equal(seen[-1], full[-1])
        assert np.isnan(seen[np.triu_indices(T, 1)]).all()
        assert np.isnan(both["seen"][name].initial).all()
        # Curves: after every chunk of task t, tasks 0..t as in "all", the others missing.
        c_all, c_seen = both["all"][name].curves, both["seen"][name].curves
        assert c_seen["step"] == c_all["step"]
        v_all, v_seen = np.array(c_all["values"]), np.array(c_seen["values"])
        assert np.isnan(v_seen[0]).all()  # no evaluation before training
        for e, t in enumerate(c_seen["training_task"][1:], start=1):
            np.testing.assert_array_equal(v_seen[e, : t + 1], v_all[e, : t + 1])
            assert np.isnan(v_seen[e, t + 1 :]).all()
        s_all, s_seen = both["all"][name].summary, both["seen"][name].summary
        for key in ("average", "forgetting", "bwt"):
            assert s_seen[key] == s_all[key]
        assert s_all["fwt"] is not None and s_seen["fwt"] is None
        # The task-aware reading: the same lower triangle, missing above it.
        view_all = np.array(both["all"][name].views["task_aware"]["matrix"])
        view_seen = np.array(both["seen"][name].views["task_aware"]["matrix"])
        np.testing.assert_array_equal(view_seen[lower], view_all[lower])
        assert np.isnan(view_seen[np.triu_indices(T, 1)]).all()
        assert both["seen"][name].views["task_aware"]["summary"]["fwt"] is None


@pytest.mark.slow
def test_the_joint_baseline_still_evaluates_every_task(both):
    full, seen = both["all"]["joint"], both["seen"]["joint"]
    assert seen.matrix == full.matrix and seen.summary == full.summary
    assert np.isnan(seen.initial).all()  # nothing before training
    np.testing.assert_array_equal(seen.curves["values"][1:], full.curves["values"][1:])


@pytest.mark.slow
def test_missing_values_are_null_in_strict_json_and_read_back(both, tmp_path):
    seen = both["seen"]
    for r in seen.values():
        res.save_results(tmp_path, r)
    res.save_comparison(tmp_path, seen)
    strict_loads((tmp_path / "comparison.json").read_text())
    d = strict_loads((tmp_path / "naive" / "results.json").read_text())
    assert d["initial"] == [None] * T
    for i, row in enumerate(d["matrix"]):
        assert all(v is not None for v in row[: i + 1])
        assert row[i + 1 :] == [None] * (T - 1 - i)
    assert d["curves"]["values"][0] == [None] * T
    assert d["summary"]["fwt"] is None
    assert d["views"]["task_aware"]["initial"] == [None] * T
    assert d["views"]["task_aware"]["matrix"][0][1:] == [None] * (T - 1)
    # Read back: NaN again, and written again to the same JSON.
    loaded = res.load_run(tmp_path)
    back = loaded["naive"]
    assert np.isnan(back.matrix[0][1]) and np.isnan(back.initial).all()
    assert back.to_json() == d
    assert comparable(back) == comparable(seen["naive"])
    assert "nan" in (tmp_path / "naive" / "curves.csv").read_text()
    print(res.format_table(loaded))


def test_plots_draw_with_missing_values(both, tmp_path):
    for r in both["seen"].values():
        res.save_results(tmp_path, r)
    paths = plots.plot_run(res.load_run(tmp_path), tmp_path / "plots")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("value", ["some", "All", None, 1])
def test_another_value_is_a_config_error_naming_the_allowed_ones(value):
    config = tiny_config(value)
    with pytest.raises(ConfigError, match=r"train\.evaluate must be one of 'all', 'seen'"):
        runner.plan(config)


# should_stop turns true at its k-th call (calls: after every chunk, and after every task):
# k = 1 stops in the middle of the first task, k = 3 at its end, k = 5 in the second task.
@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_resumed_run_equals_an_uninterrupted_one(both, tmp_path, k):
    config = tiny_config("seen")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= k

    plan = runner.plan(config, ["ewc"])
    with pytest.raises(Interrupted):
        runner.execute(plan, run_dir=tmp_path, should_stop=stop)
    saved = [p for p in (tmp_path / "ewc" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved  # the resume below starts from a checkpoint, not over
    (resumed,) = runner.execute(
        runner.plan(config, ["ewc"]), run_dir=tmp_path, resume=True
    ).values()
    assert comparable(resumed) == comparable(both["seen"]["ewc"])


@pytest.mark.slow
def test_a_sweep_evaluates_seen_tasks_and_matches_all():
    grid = {"regularisers.ewc.strength": [0.5, 50.0]}
    out = {}
    for ev in ("all", "seen"):
        config = tiny_config(ev)
        config["run"] = []
        (group,) = sw.plan_sweep(config, grid, 1, {}, ["ewc"])
        out[ev] = sw.run_group(group)
    lower = np.tril_indices(T)
    for full, seen in zip(out["all"], out["seen"], strict=True):
        np.testing.assert_array_equal(np.array(seen.matrix)[lower], np.array(full.matrix)[lower])
        assert np.isnan(np.array(seen.matrix)[np.triu_indices(T, 1)]).all()
        assert seen.summary["fwt"] is None and seen.summary["bwt"] == full.summary["bwt"]
        strict_loads(json.dumps(seen.to_json()))
    assert out["seen"][0].matrix[-1] != out["seen"][1].matrix[-1]  # the members differ


def test_evaluate_tasks_skips_unseen_tasks_with_one_compiled_program(both):
    plan = runner.plan(tiny_config("seen"), ["naive"])
    method, test = plan.methods[0], jax.device_put(plan.test)
    full = evaluate_tasks(method.objective, method.params, test)
    seen = jax.jit(lambda p, upto: evaluate_tasks(method.objective, p, test, upto))
    for row in range(T):
        values = np.asarray(seen(method.params, jnp.int32(row)))
        np.testing.assert_allclose(values[: row + 1], np.asarray(full)[: row + 1], rtol=1e-6)
        assert np.isnan(values[row + 1 :]).all()
    assert seen._cache_size() == 1  # the row is a value: no recompilation per task
    jaxpr = jax.make_jaxpr(lambda p: evaluate_tasks(method.objective, p, test, 0))(method.params)
    assert "cond" in str(jaxpr)  # an unseen task is a branch not taken, not a masked result


def test_all_is_the_default():
    config = copy.deepcopy(tiny_config())
    del config["train"]["evaluate"]
    assert runner.train_settings(config).evaluate == "all"


def test_the_command_line_sets_it(tmp_path):
    from continual.cli import main

    argv = ["run", "split_blobs", "--out", str(tmp_path), "--name", "s", "--quiet", "--no-plots"]
    argv += ["--method", "naive", "--set", "train.evaluate=seen", "--set", "train.steps=20"]
    assert main([*argv, "--set", "train.eval_every=10"]) == 0
    r = strict_loads((tmp_path / "split_blobs" / "s" / "naive" / "results.json").read_text())
    assert r["initial"] == [None] * len(r["tasks"]) and r["matrix"][0][-1] is None
    assert r["matrix"][-1][0] is not None and r["summary"]["fwt"] is None
