"""The compiled training path: no recompilation across tasks, divergence, freezing, streams."""

import copy

import jax
import numpy as np
import pytest

from continual import runner
from continual.config import apply_overrides
from continual.streams import split_blobs
from continual.train import DivergenceError

from helpers import run, toy_config


class CompileCounter:
    """Counts XLA backend compilations while active."""

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


COUNTER = CompileCounter()


@pytest.mark.slow
def test_nothing_compiles_after_the_first_chunk():
    # Three tasks of different sizes: every task switch changes values (task index, sizes,
    # freeze mask), never shapes, so the executables compiled before the first step serve all.
    config = toy_config(tasks=(((1.0, 2.0),), ((2.0, 1.0), (0.0, 1.0)), ((3.0, 0.5),)), steps=40)
    p = runner.plan(config)
    counts = []
    COUNTER.count, COUNTER.active = 0, True
    try:
        runner.execute(
            p,
            on_steps=lambda n: counts.append(COUNTER.count),
            on_result=lambda r: counts.append(("done", COUNTER.count)),
        )
    finally:
        COUNTER.active = False
    per_method, current = [], []
    for c in counts:
        if isinstance(c, tuple):
            per_method.append([*current, c[1]])
            current = []
        else:
            current.append(c)
    assert len(per_method) == len(p.methods)
    for seen in per_method:
        assert len(set(seen)) == 1, seen  # no compilation between first chunk and method end


def test_non_finite_loss_names_the_task_and_step():
    config = toy_config(tasks=(((1.0, 2.0),), ((2.0, 1.0),)), steps=40, methods=["naive"])
    config["optimizer"].update(learning_rate=50.0, momentum=0.0)
    with pytest.raises(DivergenceError) as err:
        run(config)
    assert err.value.task == "A" and 0 < err.value.step < 40
    assert "non-finite loss on task 'A' at step" in str(err.value)
    assert err.value.last_finite is not None and np.isfinite(err.value.last_finite)


def test_freeze_applies_after_the_first_task_only():
    config = toy_config(steps=200, methods=["article"])
    r = run(config)["article"]
    a0 = r.params[0]["params"]["linear"]["kernel"][0][0]
    a1 = r.params[1]["params"]["linear"]["kernel"][0][0]
    assert a0 != 0.0 and a1 == a0


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_numbers():
    config = blobs_config(["naive"])
    first, again = run(config)["naive"], run(config)["naive"]
    assert first.matrix == again.matrix and first.curves == again.curves
    other = copy.deepcopy(config)
    other["seed"] = 1
    assert run(other)["naive"].matrix != first.matrix


def blobs_config(methods, scenario="task"):
    return {
        "seed": 0,
        "stream": {
            "name": "split_blobs",
            "num_tasks": 3,
            "num_classes": 6,
            "dim": 8,
            "train_per_class": 30,
            "test_per_class": 20,
            "scenario": scenario,
        },
        "model": {"name": "mlp", "widths": [32]},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "train": {"steps": 60, "batch_size": 16, "eval_every": 20},
        "regularisers": {
            "ewc": {"strength": 100.0},
            "l2": {"strength": 1.0},
            "replay": {"capacity": 30, "batch_size": 16},
        },
        "methods": {
            "naive": {},
            "ewc": {"use": ["ewc"]},
            "replay": {"use": ["replay"]},
            "ewc+replay": {"use": ["ewc", "replay"]},
            "joint": {"joint": True},
        },
        "run": methods,
    }


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "class", "domain"])
def test_classification_stream_runs_every_method(scenario):
    results = run(blobs_config(["naive", "ewc", "replay", "ewc+replay", "joint"], scenario))
    for name, r in results.items():
        m = np.asarray(r.matrix)
        assert m.shape == ((1, 3) if name == "joint" else (3, 3)), name
        assert ((m >= 0) & (m <= 1)).all() and r.metric == "accuracy"
    naive = np.asarray(results["naive"].matrix)
    assert naive[np.arange(3), np.arange(3)].min() > 0.6  # each task is learned when trained
    if scenario == "class":  # a single head without task identity forgets the old classes
        assert naive[2, 0] < 0.3 and results["replay"].matrix[2][0] > naive[2, 0]


def test_split_scenarios_label_masks_and_relabelling():
    task = split_blobs(num_tasks=2, num_classes=4, scenario="task")
    assert task.num_outputs == 4 and task.tasks[1].label_mask.tolist() == [0, 0, 1, 1]
    cls = split_blobs(num_tasks=2, num_classes=4, scenario="class")
    assert cls.tasks[1].label_mask.all() and set(cls.tasks[1].train["y"]) == {2, 3}
    dom = split_blobs(num_tasks=2, num_classes=4, scenario="domain")
    assert dom.num_outputs == 2 and set(dom.tasks[1].train["y"]) == {0, 1}
    with pytest.raises(ValueError, match="scenario"):
        split_blobs(scenario="nope")
    with pytest.raises(ValueError, match="equal tasks"):
        split_blobs(num_tasks=3, num_classes=4)


def their_split(x, y, seed, num_tasks=5, per_task=2):
    """van de Ven et al.'s data/load.py get_context_set for split MNIST, domain-incremental:
    np.random.seed(seed) (a RandomState(seed)) draws p; class c becomes p[c], except at seed 0;
    context t keeps the new labels per_task * t ..., relabelled from 0 in the domain scenario."""
    p = np.arange(10) if seed == 0 else np.random.RandomState(seed).permutation(10)
    new = p[y]
    keep = [new // per_task == t for t in range(num_tasks)]
    return [(x[k], new[k] - per_task * t) for t, k in enumerate(keep)]


def test_a_split_streams_class_order_sorted_shuffled_or_listed():
    sorted_ = split_blobs(num_tasks=5, scenario="domain")
    assert [t.name for t in sorted_.tasks][:2] == ["blobs[0-1]", "blobs[2-3]"]
    raw = split_blobs(num_tasks=1, scenario="class").tasks[0].train
    for seed in (0, 2, 5):  # "shuffled" is their draw, seed 0 included
        ours = split_blobs(num_tasks=5, scenario="domain", class_order="shuffled", class_seed=seed)
        for task, (x, y) in zip(ours.tasks, their_split(raw["x"], raw["y"], seed), strict=True):
            np.testing.assert_array_equal(task.train["x"], x)
            np.testing.assert_array_equal(task.train["y"], y)
    shuffled = split_blobs(num_tasks=5, scenario="domain", class_order="shuffled", class_seed=2)
    order = [int(c) for t in shuffled.tasks for c in t.name[6:-1].split("-")]
    assert order[:2] != [0, 1]  # seed 2 does shuffle, and a list gives the same stream
    listed = split_blobs(num_tasks=5, scenario="domain", class_order=order)
    for a, b in zip(shuffled.tasks, listed.tasks, strict=True):
        assert a.name == b.name and np.array_equal(a.train["y"], b.train["y"])
    other = split_blobs(num_tasks=5, scenario="task", class_order="shuffled", class_seed=3)
    assert [t.name for t in other.tasks] != [t.name for t in shuffled.tasks]
    assert other.tasks[0].label_mask.sum() == 2
    assert set(np.flatnonzero(other.tasks[0].label_mask)) == set(other.tasks[0].train["y"])
    with pytest.raises(ValueError, match="unknown class_order 'random'"):
        split_blobs(class_order="random")
    with pytest.raises(ValueError, match="exactly once"):
        split_blobs(class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="class_order 5 must list"):
        split_blobs(class_order=5)
    with pytest.raises(ValueError, match="class_seed must be an integer >= 0, got -1"):
        split_blobs(class_order="shuffled", class_seed=-1)


def test_a_shuffled_class_order_follows_the_runs_seed_unless_given_its_own():
    config = runner.with_defaults(blobs_config(["naive"]))
    assert config["stream"]["class_order"] is None and config["stream"]["class_seed"] is None
    assert not runner.stream_follows_seed(config)
    sorted_names = [t.name for t in runner.build_stream(config).tasks]
    config = apply_overrides(config, ["stream.class_order=shuffled"])  # as --set does
    assert runner.stream_follows_seed(config)
    names = {}
    for seed in (0, 2, 3):
        config["seed"] = seed
        names[seed] = [t.name for t in runner.build_stream(config).tasks]
    order = np.argsort(np.random.RandomState(2).permutation(6))
    assert names[2] == [f"blobs[{order[i]}-{order[i + 1]}]" for i in (0, 2, 4)] != names[3]
    assert names[0] == sorted_names  # their seed 0 keeps the classes in order
    config = apply_overrides(config, ["stream.class_seed=2"])  # its own: the run's seed is not read
    assert not runner.stream_follows_seed(config)
    assert [t.name for t in runner.build_stream(config).tasks] == names[2]


def test_plan_checks_everything_before_running():
    config = blobs_config(["naive"])
    config["train"]["eval_every"] = 7
    with pytest.raises(ValueError, match=r"multiple of train\.eval_every"):
        runner.plan(config)


def test_exact_compile_off_gives_the_same_numbers_to_rounding():
    config = toy_config(steps=40, methods=["naive", "ewc"])
    exact = run(config)
    config["train"]["exact_compile"] = False  # XLA's own CPU options
    fast = run(config)
    for name, r in exact.items():
        np.testing.assert_allclose(fast[name].matrix, r.matrix, rtol=1e-5, atol=1e-6)
        assert fast[name].initial == r.initial


def test_eval_batch_reads_the_same_numbers_in_blocks():
    config = blobs_config(["naive", "joint"], scenario="class")  # a second reading: task-aware
    whole = runner.run(config)[1]
    config["train"]["eval_batch"] = 7  # 40 test examples per task: blocks of 7, the last of 5
    blocks = runner.run(config)[1]
    for name, r in whole.items():
        np.testing.assert_allclose(blocks[name].matrix, r.matrix, rtol=1e-6)
        np.testing.assert_allclose(blocks[name].initial, r.initial, rtol=1e-6)
        for view, v in r.views.items():
            np.testing.assert_allclose(blocks[name].views[view]["matrix"], v["matrix"], rtol=1e-6)
    config["train"]["eval_batch"] = -1
    with pytest.raises(ValueError, match=r"train\.eval_batch must be"):
        runner.plan(config)


def test_null_unsets_a_key_but_not_a_flag():
    from continual.config import ConfigError, parse_value

    assert parse_value("null", "known", "stream.probe_keep") is None
    assert parse_value("null", 3, "train.steps") is None
    assert parse_value("null", None, "x") is None
    with pytest.raises(ConfigError, match="true or false"):
        parse_value("null", True, "train.record_params")
