"""Small builders shared by the tests."""

import copy
import json
import os
import subprocess
import sys

import jax

from continual import runner
from continual.experiments import linear_toy


def toy_config(tasks=None, steps=400, methods=None, **regs):
    """The linear toy config, shrunk: `tasks` replaces the article's points, `regs` the
    regulariser hyperparameters, `methods` the methods to run."""
    config = copy.deepcopy(linear_toy.get_config())
    if tasks is not None:
        config["stream"]["tasks"] = tasks
    config["train"].update(steps=steps, eval_every=steps // 4)
    for name, hyper in regs.items():
        config["regularisers"][name].update(hyper)
    if methods is not None:
        config["run"] = list(methods)
    return config


def final_params(results):
    """(a, b) of the linear toy after the last task."""
    layer = results.params[-1]["params"]["linear"]
    return layer["kernel"][0][0], layer["bias"][0]


def run(config, methods=None):
    return runner.run(config, methods)[1]


def leaves_close(a, b, tol=1e-6):
    return all(
        abs(x - y).max() <= tol for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def on_four_devices(code: str):
    """Runs `code` in a fresh interpreter that sees four CPU devices (from the repository root);
    returns the JSON its last line of output prints."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"  # four simulated CPU devices, also on a machine with a GPU
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
