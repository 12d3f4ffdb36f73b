"""Every experiment config runs in smoke size, through the same runner as the full one."""

import copy

import numpy as np
import pytest

from continual import streams
from continual.config import experiment_names, load_experiment

from helpers import run


def tiny_images():
    """MNIST-shaped uint8 images and labels: 1,200 training and 100 test examples (enough for
    the memories of the full configs: 100 per class)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1300, 28, 28, 1), dtype=np.uint8)
    y = np.arange(1300, dtype=np.int32) % 10
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("name", experiment_names())
def test_experiment_runs_in_smoke_size(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path))  # generated data goes to a fresh cache
    for source in ("mnist", "fashion_mnist"):  # tests never download: tiny stand-in images
        monkeypatch.setitem(streams.SOURCES, source, tiny_images)
    module = load_experiment(name)
    assert module.__doc__ and "continual run" in module.__doc__  # the command is documented
    # An experiment whose data would need a download names the argument of its offline variant.
    config = copy.deepcopy(module.get_config(getattr(module, "SMOKE_ARG", None)))
    config["train"].update(steps=4, eval_every=2)
    results = run(config)
    assert set(results) == set(config["run"] or config["methods"])
    for r in results.values():
        assert len(r.matrix[-1]) == len(r.tasks)
