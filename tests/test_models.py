"""Weight initialisation schemes of the MLP and CNN (continual.models.inits)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import models, runner
from continual.config import load_experiment


def _layers(name, initializer, x, **kwargs):
    model = models.make(name, 10, initializer=initializer, **kwargs)
    return model.init(jax.random.key(0), x)["params"]


@pytest.mark.slow
def test_torch_draws_weights_and_biases_uniformly_within_one_over_root_fan_in():
    # PyTorch's nn.Linear / nn.Conv1d default: U(-b, b), b = 1 / sqrt(fan_in), biases too.
    mlp = _layers("mlp", "torch", jnp.zeros((1, 784)), widths=[400])
    cnn = _layers(
        "cnn", "torch", jnp.zeros((1, 40)), channels=[25, 25], kernels=[5, 3], strides=[2, 2]
    )
    fans = {
        ("mlp", "hidden_0"): 784,
        ("mlp", "out"): 400,
        ("cnn", "conv_0"): 1 * 5,
        ("cnn", "conv_1"): 25 * 3,
    }
    for (net, layer), fan_in in fans.items():
        params = (mlp if net == "mlp" else cnn)[layer]
        bound = 1 / np.sqrt(fan_in)
        for leaf in (params["kernel"], params["bias"]):
            leaf = np.asarray(leaf)
            assert np.abs(leaf).max() <= bound
            assert np.abs(leaf).max() > 0.9 * bound  # spread over the whole interval
        kernel = np.asarray(params["kernel"])
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.1)  # uniform's SD


def test_glorot_is_keras_default_and_lecun_flax_default():
    x = jnp.zeros((1, 784))
    glorot = _layers("mlp", "glorot", x, widths=[400])["hidden_0"]
    bound = np.sqrt(6 / (784 + 400))
    assert np.abs(glorot["kernel"]).max() <= bound < 1.05 * np.abs(glorot["kernel"]).max()
    assert not np.any(glorot["bias"])
    lecun = _layers("mlp", "lecun", x, widths=[400])
    default = models.make("mlp", 10, widths=[400]).init(jax.random.key(0), x)["params"]
    for a, b in zip(jax.tree.leaves(lecun), jax.tree.leaves(default), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.asarray(lecun["hidden_0"]["kernel"]).std(), 1 / 28, rtol=0.05)
    assert not np.any(lecun["hidden_0"]["bias"])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_unknown_initializer_is_refused(name):
    with pytest.raises(ValueError, match="unknown initializer 'he'; choose one of lecun"):
        models.make(name, 3, initializer="he")


def test_the_initializer_default_follows_an_overridden_model_name():
    config = load_experiment("split_blobs").get_config()
    config["model"] = {"name": "mlp"}
    mlp = {"name": "mlp", "initializer": "lecun", "residual": False}
    assert runner.configure(config, [])["model"] == mlp
    assert runner.configure(config, ["model.name=linear"])["model"] == {"name": "linear"}
    runner.plan(runner.configure(config, ["model.name=linear"]))  # no stray initializer
    torch = runner.configure(config, ["model.initializer=torch"])["model"]
    assert torch == {**mlp, "initializer": "torch"}
    assert runner.configure(config, ["model.residual=true"])["model"] == {**mlp, "residual": True}


def test_a_residual_mlp_adds_each_later_hidden_layers_input():
    x = jax.random.normal(jax.random.key(1), (3, 5))
    model = models.make("mlp", 2, widths=[4, 4, 4], residual=True)
    p = model.init(jax.random.key(0), x)["params"]

    def dense(name, h):
        return h @ p[name]["kernel"] + p[name]["bias"][None]

    h = jax.nn.relu(dense("hidden_0", x))
    h = h + jax.nn.relu(dense("hidden_1", h))
    h = h + jax.nn.relu(dense("hidden_2", h))
    np.testing.assert_allclose(model.apply({"params": p}, x), dense("out", h), rtol=1e-5)
    plain = models.make("mlp", 2, widths=[4, 4, 4]).apply({"params": p}, x)
    assert not np.allclose(plain, dense("out", h))  # the default has no skip connections
    with pytest.raises(ValueError, match=r"residual needs equal hidden widths, got \[4, 3\]"):
        models.make("mlp", 2, widths=[4, 3], residual=True)
    with pytest.raises(ValueError, match="residual must be true or false, got 1"):
        models.make("mlp", 2, residual=1)
