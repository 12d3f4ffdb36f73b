"""stream.train_outputs = "seen": class-incremental training over the classes seen so far only.

Training (its loss, replayed examples, A-GEM's reference, the Fisher) reads the restriction;
evaluation never does.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models, runner
from continual.config import ConfigError, apply_overrides
from continual.experiments import split_mnist
from continual.losses import LIKELIHOODS, Objective
from continual.regularisers.agem import agem
from continual.regularisers.ewc import fisher_diagonal
from continual.regularisers.replay import replay
from continual.streams import split_blobs, train_outputs
from continual.types import stack_tasks, union

from regulariser_setup import MODEL, PARAMS, X0, Y0, task_data

# The regulariser tests' tasks (the same examples), class-incremental: one head, no masks.
STREAM = split_blobs(3, "class", num_classes=6, dim=5, train_per_class=8, test_per_class=2)
OBJ = Objective(
    MODEL.apply,
    LIKELIHOODS["categorical"],
    jnp.asarray(np.stack([t.label_mask for t in STREAM.tasks])),
)
SEEN = train_outputs(STREAM, "seen")


def with_outputs(data, t):
    """Task data trained while task t is the current one."""
    n = data["y"].shape[0]
    return {**data, "outputs": jnp.broadcast_to(jnp.asarray(SEEN.tasks[t].outputs), (n, 6))}


def test_the_outputs_grow_task_by_task_and_the_label_masks_stay():
    assert STREAM.scenario == "class"
    got = np.stack([t.outputs for t in SEEN.tasks])
    want = np.arange(6)[None, :] < 2 * (np.arange(3)[:, None] + 1)
    np.testing.assert_array_equal(got, want)
    for a, b in zip(SEEN.tasks, STREAM.tasks, strict=True):
        np.testing.assert_array_equal(a.label_mask, b.label_mask)
    train, test = stack_tasks(SEEN.tasks, "train"), stack_tasks(SEEN.tasks, "test")
    np.testing.assert_array_equal(train.outputs, want)
    assert test.outputs is None  # evaluation reads the label masks alone
    assert union(train).outputs.tolist() == [[True] * 6]  # joint: every class at once
    batch = train.sample(1, jnp.arange(3))
    np.testing.assert_array_equal(batch["outputs"], np.broadcast_to(want[1], (3, 6)))
    assert "outputs" not in stack_tasks(STREAM.tasks, "train").sample(1, jnp.arange(3))
    assert train_outputs(STREAM, "all") is STREAM


def test_the_loss_is_a_softmax_over_the_seen_classes():
    data = with_outputs(task_data(0), 1)
    logits = MODEL.apply(PARAMS, data["x"])[:, :4]
    want = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(logits)), data["y"]])
    assert float(OBJ.loss(PARAMS, data)) == pytest.approx(float(want), rel=1e-6)
    assert float(OBJ.loss(PARAMS, task_data(0))) != pytest.approx(float(want), rel=1e-3)


def memory_of_task_0(reg):
    state = reg.consolidate(reg.init(PARAMS), PARAMS, task_data(0), jax.random.key(0))
    return state, task_data(0)  # the memory holds all of task 0


def seen_loss(params, data, t):
    """Cross-entropy of `data` with a softmax over the classes of tasks 0..t only."""
    logits = MODEL.apply(params, data["x"])[:, : 2 * (t + 1)]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(logits)), data["y"]])


def test_replayed_examples_meet_the_classes_of_the_current_task():
    reg = replay(OBJ, 16, X0, Y0)
    state, old = memory_of_task_0(reg)
    current = with_outputs(jax.tree.map(lambda a: a[:4], task_data(1)), 1)
    got = float(reg.penalty(PARAMS, state, current, jax.random.key(1))[0])
    assert got == pytest.approx(float(seen_loss(PARAMS, old, 1)), rel=1e-6)
    plain = float(reg.penalty(PARAMS, state, {}, jax.random.key(1))[0])
    assert plain == pytest.approx(float(OBJ.loss(PARAMS, old)), rel=1e-6)
    assert plain != pytest.approx(got, rel=1e-3)


def test_agem_takes_its_reference_gradient_under_the_current_restriction():
    reg = agem(OBJ, 16, X0, Y0)
    state, old = memory_of_task_0(reg)
    current = with_outputs(jax.tree.map(lambda a: a[:4], task_data(1)), 1)
    reference = jax.grad(seen_loss)(PARAMS, old, 1)
    opposite = jax.tree.map(jnp.negative, reference)  # violates the constraint: fully projected
    got = reg.transform(opposite, PARAMS, state, current, jax.random.key(1))
    for leaf in jax.tree.leaves(got):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-6)


@pytest.mark.parametrize("estimator", ["exact", "empirical"])
def test_the_fisher_reads_the_restriction(estimator):
    data = with_outputs(task_data(1), 1)
    narrowed = OBJ._replace(label_masks=OBJ.label_masks & SEEN.tasks[1].outputs[None, :])
    key = jax.random.key(0)
    got = fisher_diagonal(OBJ, PARAMS, data, key, estimator)
    want = fisher_diagonal(narrowed, PARAMS, task_data(1), key, estimator)
    full = fisher_diagonal(OBJ, PARAMS, task_data(1), key, estimator)
    got, want, full = (jax.tree.leaves(f) for f in (got, want, full))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(g, f, rtol=1e-3) for g, f in zip(got, full, strict=True))


def blobs_config(outputs):
    return {
        "seed": 0,
        "stream": {
            "name": "split_blobs",
            "num_tasks": 3,
            "num_classes": 6,
            "dim": 6,
            "train_per_class": 20,
            "test_per_class": 10,
            "scenario": "class",
            "train_outputs": outputs,
        },
        "model": {"name": "mlp", "widths": [16]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "record_params": True},
        "regularisers": {"replay": {"capacity": 12, "batch_size": 8}},
        "methods": {"naive": {}, "er": {"use": ["replay"]}},
    }


MODEL_OF_CONFIG = models.make("mlp", 6, widths=(16,))


def arrays(params):
    """Recorded parameters (nested lists in Results) as arrays."""
    return jax.tree.map(np.asarray, params, is_leaf=lambda a: isinstance(a, list))


def head(params):
    layers = arrays(params)["params"]
    last = sorted(layers)[-1]
    return np.asarray(layers[last]["kernel"]), np.asarray(layers[last]["bias"])


@pytest.fixture(scope="module")
def runs():
    return {outputs: runner.run(blobs_config(outputs))[1] for outputs in ("seen", "all")}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["naive", "er"])
def test_training_never_moves_the_outputs_of_classes_still_to_come(runs, method):
    seen = runs["seen"][method]
    kernel0, bias0 = head(seen.params[0])
    kernel1, bias1 = head(seen.params[1])
    np.testing.assert_array_equal(kernel0[:, 4:], kernel1[:, 4:])  # classes 4, 5: task 2's
    np.testing.assert_array_equal(bias0[4:], bias1[4:])
    assert not np.array_equal(kernel0[:, 2:4], kernel1[:, 2:4])  # task 1's classes learnt
    every = runs["all"][method]
    assert not np.array_equal(head(every.params[0])[1][4:], head(every.params[1])[1][4:])
    # Evaluation is not restricted: every output competes, also those not trained yet.
    stream = runner.build_stream(blobs_config("seen"))
    for row, params in enumerate(seen.params):
        for j, task in enumerate(stream.tasks):
            logits = MODEL_OF_CONFIG.apply(arrays(params), jnp.asarray(task.test["x"]))
            accuracy = np.mean(np.argmax(np.asarray(logits), axis=1) == task.test["y"])
            assert seen.matrix[row][j] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ({"train_outputs": "current"}, "train_outputs must be one of all, seen"),
        ({"name": "linear_toy", "train_outputs": "seen"}, "needs class labels"),
    ],
)
def test_a_bad_value_is_one_config_error(stream, message):
    config = copy.deepcopy(blobs_config("seen"))
    if stream.get("name") == "linear_toy":
        config["stream"] = dict(stream)
    else:
        config["stream"].update(stream)
    with pytest.raises(ConfigError, match=message) as e:
        runner.build_stream(config)
    assert "\n" not in str(e.value)


def test_split_streams_of_every_scenario_accept_it():
    for scenario in ("task", "domain", "class"):
        s = train_outputs(split_blobs(num_tasks=2, num_classes=4, scenario=scenario), "seen")
        assert all(t.outputs is not None for t in s.tasks)


def test_every_experiment_can_set_it_from_the_command_line():
    config = runner.with_defaults(split_mnist.get_config())
    assert config["stream"]["train_outputs"] == "all"
    assert apply_overrides(config, ["stream.train_outputs=seen"])["stream"]["train_outputs"] == (
        "seen"
    )


def test_a_run_made_before_the_key_existed_resumes_without_a_config_change(tmp_path):
    from types import SimpleNamespace

    from continual import rundir

    config = runner.with_defaults(blobs_config("all"))
    older = copy.deepcopy(config)
    del older["stream"]["train_outputs"]  # what config.json held before the key existed
    request = {"experiment": "split_blobs", "methods": ["naive"]}
    rundir.create(tmp_path / "split_blobs" / "old", older, request)
    args = SimpleNamespace(
        out=str(tmp_path),
        experiment="split_blobs",
        name="old",
        resume=True,
        overwrite=False,
        allow_config_change=False,
    )
    assert rundir.choose(args, config, request) == (tmp_path / "split_blobs" / "old", True)
    changed = apply_overrides(config, ["stream.train_outputs=seen"])
    with pytest.raises(ValueError, match=r"stream\.train_outputs"):
        rundir.choose(args, changed, request)
    rundir.release()  # (the command does when it ends)
