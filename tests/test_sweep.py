"""Sweeps: one vmapped program equals its members run alone, on one device or four, to the bit
on CPU (program.compile_lowered's options keep a member's arithmetic the same with a member
axis)."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import program, runner
from continual import sweep as sw
from continual.cli import main

from helpers import on_four_devices, run


def exact() -> bool:
    """On CPU, where program.compile_lowered's options apply (not at import: test_multihost's
    processes import this file before jax.distributed.initialize)."""
    return jax.default_backend() == "cpu"


def assert_same(a, b):
    if exact():
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, atol=1e-5)


def tiny_config():
    return {
        "seed": 0,
        "stream": {
            "name": "split_blobs",
            "num_tasks": 2,
            "num_classes": 4,
            "dim": 6,
            "train_per_class": 20,
            "test_per_class": 10,
            "scenario": "class",
        },
        "model": {"name": "mlp", "widths": [16]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "train": {"steps": 40, "batch_size": 8, "eval_every": 20},
        "regularisers": {"ewc": {"strength": 1.0}, "replay": {"capacity": 10, "batch_size": 8}},
        "methods": {"naive": {}, "ewc": {"use": ["ewc"]}, "replay": {"use": ["replay"]}},
        "run": [],
    }


def sweep_results(config, grid, seeds, method, outer=None):
    groups = sw.plan_sweep(config, grid, seeds, outer or {}, [method])
    return groups, [sw.run_group(g) for g in groups]


@pytest.mark.slow
def test_a_vmapped_sweep_equals_each_member_run_alone():
    config = tiny_config()
    # Shapes at which XLA's default CPU fusions do sum differently with a member axis (at the
    # smallest ones they happen not to): this fails with program._cpu_options = None.
    config["stream"].update(dim=40, spread=8.0, test_per_class=100)
    config["model"]["widths"] = [100]
    config["train"]["batch_size"] = 32
    grid = {"regularisers.ewc.strength": [0.5, 50.0], "optimizer.learning_rate": [0.05, 0.2]}
    (group,), (results,) = sweep_results(config, grid, 2, "ewc")
    assert len(results) == 8
    for member, r in zip(group.members, results, strict=True):
        alone = copy.deepcopy(config)
        alone["seed"] = member.seed
        alone["regularisers"]["ewc"]["strength"] = member.values["regularisers.ewc.strength"]
        alone["optimizer"]["learning_rate"] = member.values["optimizer.learning_rate"]
        single = run(alone, ["ewc"])["ewc"]
        assert_same(r.matrix, single.matrix)
        assert_same(r.curves["values"], single.curves["values"])
        assert r.views == single.views or not exact()
    # Members really differ: seeds, strengths and learning rates change the numbers (two of the
    # eight curves happen to coincide at this test set's resolution).
    assert len({json.dumps(r.curves["values"]) for r in results}) >= 7


def test_a_diverging_member_is_frozen_and_marked_while_others_finish():
    config = tiny_config()
    grid = {"optimizer.learning_rate": [0.1, 1e12]}
    (group,), (results,) = sweep_results(config, grid, 1, "naive")
    good, bad = results
    assert good.diverged is None and bad.diverged is not None
    assert bad.diverged["task"] == group.plan.stream.task_names[0]
    assert np.isfinite(bad.matrix).all()  # frozen at its last finite parameters
    alone = copy.deepcopy(config)
    single = run(alone, ["naive"])["naive"]
    assert_same(good.matrix, single.matrix)
    table = sw.summarize_sweep([group], [results])  # the diverged member is counted, not averaged
    assert [(row["n"], row["diverged"]) for row in table] == [(1, 0), (1, 1)]
    assert table[0]["average"] == (good.summary["average"], 0.0)
    assert all(table[1][k] is None for k in ("average", "first", "last", "old", "forgetting"))
    text = sw.format_table(table, good.metric)
    assert "1 (1 diverged, left out)" in text.splitlines()[2]


def test_diverged_members_are_left_out_of_the_plots_with_a_note(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from continual import plots

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or path)

    row = {"method": "ewc", "outer": {}, "n": 2, "old": (0.5, 0.1), "last": (0.9, 0.0)}
    table = [
        {**row, "values": {"s": 1.0}, "diverged": 0, "average": (0.7, 0.1)},
        {**row, "values": {"s": 10.0}, "diverged": 1, "average": (0.6, 0.0)},
        {**row, "values": {"s": 1e3}, "diverged": 2, "average": None, "old": None, "last": None},
    ]
    plots.plot_front(table, "accuracy", tmp_path / "front.png")
    plots.plot_vs_value(table, "accuracy", tmp_path / "average.png")
    for fig in figures:
        (ax,) = fig.axes
        assert [len(line.get_xdata()) for line in ax.get_lines()][:1] == [2]  # two points
        notes = [t.get_text() for t in fig.texts]
        assert notes == ["3 diverged members left out (1 point with none left)"]
        plt.close(fig)
    assert len(figures) == 2


@pytest.mark.slow
def test_outer_values_are_separate_programs():
    config = tiny_config()
    groups, results = sweep_results(
        config,
        {"regularisers.replay.weight": [0.5, 2.0]},
        1,
        "replay",
        outer={"regularisers.replay.capacity": [4, 12]},
    )
    assert [g.outer for g in groups] == [
        {"regularisers.replay.capacity": 4},
        {"regularisers.replay.capacity": 12},
    ]
    table = sw.summarize_sweep(groups, results)
    assert len(table) == 4 and all(row["n"] == 1 for row in table)


@pytest.mark.slow
def test_a_stream_drawn_from_the_seed_makes_one_program_per_seed_pooled_in_the_table():
    config = tiny_config()
    config["stream"]["class_order"] = "shuffled"  # each seed its own pairs of classes
    config["seed"] = 2
    grid = {"regularisers.ewc.strength": [0.5, 50.0]}
    groups, results = sweep_results(config, grid, 3, "ewc")
    assert [[m.seed for m in g.members] for g in groups] == [[2, 2], [3, 3], [4, 4]]
    # Each seed's stream and data are built again when its program runs, not all held at once.
    assert all(g.plan is None for g in groups) and sw.total_steps(groups) == 3 * 2 * 40
    for group, rs in zip(groups, results, strict=True):
        alone = copy.deepcopy(config)
        alone["seed"] = group.members[1].seed
        alone["regularisers"]["ewc"]["strength"] = 50.0
        single = run(alone, ["ewc"])["ewc"]
        assert rs[1].tasks == single.tasks
        assert_same(rs[1].matrix, single.matrix)
    assert len({tuple(rs[0].tasks) for rs in results}) > 1  # the seeds' class orders differ
    table = sw.summarize_sweep(groups, results)
    assert [(row["values"], row["n"]) for row in table] == [
        ({"regularisers.ewc.strength": 0.5}, 3),
        ({"regularisers.ewc.strength": 50.0}, 3),
    ]
    doc = sw.sweep_json(groups, results, table, grid, {}, 3)
    assert doc["tasks"] is None  # they differ: each member names its own
    assert [m["tasks"] for m in doc["members"][::2]] == [rs[0].tasks for rs in results]
    # As an outer value, only the shuffled order splits the seeds.
    config["stream"]["class_order"] = None
    outer = {"stream.class_order": [None, "shuffled"]}
    groups = sw.plan_sweep(config, {}, 2, outer, ["naive"])
    assert [[m.seed for m in g.members] for g in groups] == [[2, 3], [2], [3]]


FOUR_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
from test_sweep import tiny_config, sweep_results
import jax
assert len(jax.local_devices()) == 4
_, (results,) = sweep_results(tiny_config(), {"regularisers.ewc.strength": [0.5, 5.0, 50.0]}, 2,
                              "ewc")
print(json.dumps([r.matrix for r in results]))
"""


@pytest.mark.slow
def test_four_devices_give_the_numbers_of_one():
    four = on_four_devices(FOUR_DEVICES)
    _, (one,) = sweep_results(
        tiny_config(), {"regularisers.ewc.strength": [0.5, 5.0, 50.0]}, 2, "ewc"
    )
    assert len(four) == 6  # 6 members padded to 8 on 4 devices; the padding is dropped
    assert_same(four, [r.matrix for r in one])


def test_a_jax_without_the_compiler_options_compiles_without_them(monkeypatch):
    if not exact():
        pytest.skip("the options are XLA:CPU's")
    options = {"xla_cpu_no_such_option": True, "xla_cpu_use_fusion_emitters": False}
    monkeypatch.setattr(program, "_cpu_options", options)
    with pytest.warns(UserWarning, match="lacks the compile option xla_cpu_no_such_option"):
        compiled = program.compile_lowered(jax.jit(lambda x: x + 1).lower(jnp.float32(1)))
    assert compiled(jnp.float32(1)) == 2
    assert program._cpu_options == {"xla_cpu_use_fusion_emitters": False}  # the known one stays


def test_defaults_follow_outer_values():
    # Outer values are set on a config that has its defaults already: an MLP's initializer and
    # a split stream's class order must not stay behind for a model or stream without them.
    config = tiny_config()
    config["model"] = {"name": "mlp"}
    config["stream"] = {"name": "split", "source": "mnist1d", "num_tasks": 2, "scenario": "class"}
    outer = {"model.name": ["mlp", "linear"], "stream.name": ["split", "permuted"]}
    groups = sw.plan_sweep(runner.configure(config, []), {}, 1, outer, ["naive"])
    models = [g.config["model"] for g in groups]
    mlp = {"name": "mlp", "initializer": "lecun", "residual": False}
    assert models == [mlp] * 2 + [{"name": "linear"}] * 2
    assert [sorted(g.config["stream"]) for g in groups[:2]] == [
        ["class_order", "class_seed", "name", "num_tasks", "scenario", "source", "train_outputs"],
        ["name", "num_tasks", "scenario", "source", "train_outputs"],
    ]
    # as a member axis the model's name is refused for what it is
    with pytest.raises(sw.ConfigError, match=r"model\.name is not continuous"):
        sw.plan_sweep(runner.configure(config, []), {"model.name": ["mlp", "linear"]}, 1, {}, None)


@pytest.mark.slow
def test_checkpoint_folders_name_the_program_not_its_position():
    config = tiny_config()
    strengths = {"regularisers.ewc.strength": [1.0, 10.0]}
    outer = {"stream.train_per_class": [20, 30]}
    groups = sw.plan_sweep(config, strengths, 2, outer, ["ewc", "replay"])
    names = [g.checkpoint_name for g in groups]
    assert len(set(names)) == 4 and all(
        n.startswith(g.method + "-") for n, g in zip(names, groups, strict=True)
    )
    # The same programs in another order or another sweep keep their folders; other members
    # (values, seeds, outer values) give other folders.
    again = sw.plan_sweep(config, strengths, 2, {"stream.train_per_class": [30, 20]}, None)
    assert set(names) <= {g.checkpoint_name for g in again}
    others = [
        sw.plan_sweep(config, {"regularisers.ewc.strength": [1.0, 99.0]}, 2, outer, ["ewc"]),
        sw.plan_sweep(config, strengths, 3, outer, ["ewc"]),
        sw.plan_sweep({**config, "seed": 1}, strengths, 2, outer, ["ewc"]),
        sw.plan_sweep(config, strengths, 2, {"stream.train_per_class": [25]}, ["ewc"]),
    ]
    assert not {g.checkpoint_name for gs in others for g in gs} & set(names)


def test_log_ranges_and_lists():
    assert sw.parse_values("k", "1e0:1e3:4", 1.0) == pytest.approx([1.0, 10.0, 100.0, 1000.0])
    assert sw.parse_values("k", "0,0.5,2", 1.0) == [0.0, 0.5, 2.0]
    assert sw.parse_values("k", "3", 1.0) == [3.0]


@pytest.mark.slow
def test_sweep_command_writes_members_table_and_plots(tmp_path, capsys, monkeypatch):
    from continual.experiments import split_blobs

    monkeypatch.setattr(split_blobs, "get_config", lambda arg=None: tiny_config())
    argv = [
        "sweep",
        "split_blobs",
        "--method",
        "ewc",
        "--grid",
        "regularisers.ewc.strength=1:100:3",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "strength=10 " in out and "±" in out
    (run_dir,) = (tmp_path / "split_blobs").iterdir()
    doc = json.loads((run_dir / "sweep.json").read_text())
    assert len(doc["members"]) == 6 and len(doc["table"]) == 3 and doc["seeds"] == 2
    for member in doc["members"]:
        assert (run_dir / member["path"] / "results.json").exists()
    assert (run_dir / "plots" / "front.png").exists() and (
        run_dir / "plots" / "average.png"
    ).exists()


BAD = {
    "unknown key": (["--grid", "regularisers.ewc.nope=1,2"], "unknown config key"),
    "not continuous": (
        ["--method", "replay", "--grid", "regularisers.replay.capacity=4,8"],
        "regularisers.replay.capacity is not continuous",
    ),
    "not a member axis": (["--grid", "train.steps=20,40"], "cannot be a member axis"),
    "empty grid": (["--grid", "regularisers.ewc.strength="], "empty grid"),
    "zero seeds": (["--seeds", "0"], "--seeds must be a positive integer"),
    "bad range": (["--grid", "regularisers.ewc.strength=0:10:3"], "LOW, HIGH > 0"),
    "seed as grid": (["--grid", "seed=1,2"], "--seeds N"),
    "same value twice": (["--grid", "regularisers.ewc.strength=1,1"], "print alike"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sweeps_are_one_line_exit_2_nothing_written(case, tmp_path, capsys, monkeypatch):
    from continual.experiments import split_blobs

    monkeypatch.setattr(split_blobs, "get_config", lambda arg=None: tiny_config())
    extra, message = BAD[case]
    argv = ["sweep", "split_blobs", *extra, "--out", str(tmp_path / "runs"), "--quiet"]
    if "--method" not in extra:
        argv += ["--method", "ewc"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_fisher_over_many_shared_examples_is_the_same_alone_and_in_a_sweep():
    if not exact():
        pytest.skip("the options are XLA:CPU's")
    # A sweep's members share the examples, so XLA folds the member axis into the width of the
    # products that sum over them (the exact Fisher of a Dense network, dense_fisher.py); its
    # chunks keep each sum short enough to be summed in one order whatever that width.
    from continual import models
    from continual.losses import LIKELIHOODS, Objective
    from continual.regularisers import fisher_diagonal

    n, dim, classes = 1500, 40, 10
    rng = np.random.default_rng(0)
    data = {
        "x": jnp.asarray(rng.normal(size=(n, dim)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, classes, n), jnp.int32),
        "task": jnp.zeros(n, jnp.int32),
        "weight": jnp.ones(n, jnp.float32),
    }
    model = models.make("mlp", classes, widths=(100,))
    objective = Objective(model.apply, LIKELIHOODS["categorical"], jnp.ones((1, classes), bool))
    members = jax.vmap(lambda k: model.init(k, data["x"][:1]))(
        jax.random.split(jax.random.key(0), 8)
    )

    def fisher(params):
        return fisher_diagonal(objective, params, data, jax.random.key(1), "exact")

    sweep = program.compile_lowered(jax.jit(jax.vmap(fisher)).lower(members))(members)
    one = jax.tree.map(lambda a: a[:1], members)
    alone = program.compile_lowered(jax.jit(jax.vmap(fisher)).lower(one))
    for i in range(8):
        got = alone(jax.tree.map(lambda a, i=i: a[i : i + 1], members))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(sweep), strict=True):
            np.testing.assert_array_equal(a[0], b[i])
