"""The tiny stream, model and batches the regulariser tests share."""

import jax
import jax.numpy as jnp
import numpy as np

from continual import models
from continual.losses import LIKELIHOODS, Objective
from continual.streams import split_blobs

STREAM = split_blobs(num_tasks=3, num_classes=6, dim=5, train_per_class=8, test_per_class=2)
MODEL = models.make("mlp", STREAM.num_outputs, widths=(7,))
OBJ = Objective(
    MODEL.apply,
    LIKELIHOODS["categorical"],
    jnp.asarray(np.stack([t.label_mask for t in STREAM.tasks])),
)
PARAMS = MODEL.init(jax.random.key(0), jnp.asarray(STREAM.tasks[0].train["x"][:1]))
X0, Y0 = STREAM.tasks[0].train["x"][0], STREAM.tasks[0].train["y"][0]
GROUPS = [(t.id, int(c)) for t in STREAM.tasks for c in np.unique(t.train["y"])]  # (task, class)


def task_data(t, pad=0):
    """Task t's whole training split as one batch, with `pad` zero-weight rows at the end."""
    train = STREAM.tasks[t].train
    n = len(train["x"])
    data = {
        "x": train["x"],
        "y": train["y"],
        "task": np.full((n,), t, np.int32),
        "weight": np.ones((n,), np.float32),
    }
    return {k: jnp.asarray(np.concatenate([v, np.zeros_like(v[:pad])])) for k, v in data.items()}


def batch(t=0):
    return jax.tree.map(lambda a: a[:4], task_data(t))


def moved(params, by=0.3):
    return jax.tree.map(lambda p: p + by * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)


def opposing():
    """A gradient that increases task 0's loss (any memory of task 0 must change it)."""
    return jax.tree.map(jnp.negative, jax.grad(OBJ.loss)(PARAMS, task_data(0)))


def leaves_equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
