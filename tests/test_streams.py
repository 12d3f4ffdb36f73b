"""Permuted and rotated streams: transforms applied on the fly, one stored copy, the scenarios."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest

from continual import streams
from continual.experiments import split_blobs
from continual.types import stack_tasks, union

from helpers import run


def images(n=12, side=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, side, side, 1), dtype=np.float32)
    y = np.arange(n, dtype=np.int32) % 3
    return x, y, x[: n // 2], y[: n // 2]


def test_rotation_by_quarter_turns_is_exact():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    for degrees, expected in ((0, img), (90, np.rot90(img, -1)), (180, np.rot90(img, 2))):
        index, weight = streams.rotation((4, 4), degrees)
        out = (img.reshape(-1)[index] * weight).sum(0).reshape(4, 4)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rotation_weights_are_bilinear_and_zero_outside():
    index, weight = streams.rotation((6, 6), 30)
    assert index.shape == weight.shape == (4, 36)
    assert np.all(weight >= 0) and np.all(weight.sum(0) <= 1 + 1e-6)
    assert np.isclose(weight.sum(0).max(), 1, atol=1e-6)  # the centre is fully inside


@pytest.mark.parametrize("scenario", ["domain", "task", "class"])
def test_permuted_stream_stores_inputs_once_and_permutes_on_the_fly(scenario):
    x, y, xt, yt = images()
    pixels = streams.permutations(3, 16, seed=1)
    stream = streams.transformed("p", x, y, xt, yt, pixels, ["a", "b", "c"], scenario)
    data = stack_tasks(stream.tasks, "train")
    assert data.store.shape == x.shape  # one copy, not three
    heads = 1 if scenario == "domain" else 3
    assert stream.num_outputs == 3 * heads
    for t in range(3):
        batch = data.task_batch(t)
        expected = x.reshape(12, -1)[:, pixels[t][0][0]].reshape(x.shape)
        np.testing.assert_array_equal(np.asarray(batch["x"]), expected)
        offset = 3 * t if heads > 1 else 0
        np.testing.assert_array_equal(np.asarray(batch["y"]), y + offset)
        assert stream.tasks[t].label_mask.sum() == (3 if scenario == "task" else 3 * heads)
    assert (stream.view() is None) == (scenario == "domain")


def test_union_applies_each_examples_own_transform():
    x, y, xt, yt = images()
    pixels = [streams.rotation((4, 4), d) for d in (0, 90, 180)]
    stream = streams.transformed("r", x, y, xt, yt, pixels, ["0", "90", "180"], "domain")
    data = stack_tasks(stream.tasks, "train")
    joint = union(data)
    assert joint.store.shape == x.shape
    got = np.asarray(joint.task_batch(0)["x"])
    expected = np.concatenate([np.asarray(data.task_batch(t)["x"]) for t in range(3)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    sampled = joint.sample(0, jnp.array([0, 13, 30]))
    np.testing.assert_allclose(np.asarray(sampled["x"]), expected[[0, 13, 30]], atol=1e-6)


def test_permuted_and_rotated_need_sensible_arguments():
    with pytest.raises(ValueError, match="unknown source"):
        streams.permuted(source="cifar")
    with pytest.raises(ValueError, match="one-channel 2-D images"):
        streams.rotated(source="mnist1d")
    with pytest.raises(ValueError, match="num_tasks"):
        streams.permuted(source="mnist1d", num_tasks=0)


def test_permuted_and_split_mnist1d_name_their_tasks_and_other_reading():
    stream = streams.permuted(source="mnist1d", num_tasks=2, scenario="task")
    assert [t.name for t in stream.tasks] == [
        "permuted_mnist1d[original]",
        "permuted_mnist1d[perm1]",
    ]
    name, masks = stream.view()
    assert name == "task_agnostic" and masks.all()
    split = streams.split_mnist1d()
    name, own = split.view()
    assert name == "task_aware" and own.sum(axis=1).tolist() == [2] * 5


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["class", "task"])
def test_runs_report_the_other_reading_of_accuracy(scenario):
    config = copy.deepcopy(split_blobs.get_config())
    config["stream"].update(scenario=scenario, num_tasks=3, num_classes=6, train_per_class=20)
    config["train"].update(steps=20, eval_every=10)
    config["run"] = ["naive"]
    (r,) = run(config).values()
    name = "task_aware" if scenario == "class" else "task_agnostic"
    view = r.views[name]
    assert np.shape(view["matrix"]) == (3, 3) and len(view["initial"]) == 3
    assert set(view["summary"]) == {"average", "forgetting", "bwt", "fwt"}
    # Knowing the task can only help: a correct unmasked prediction stays correct when masked.
    aware, agnostic = (
        (view["matrix"], r.matrix) if name == "task_aware" else (r.matrix, view["matrix"])
    )
    assert np.all(np.asarray(aware) >= np.asarray(agnostic) - 1e-6)
    assert r.to_json()["views"] == r.views
