"""Task-stream factories: the article's linear toy and split classification streams."""

from __future__ import annotations

import numpy as np

from continual.data import mnist1d, synthetic, toy
from continual.types import SCENARIOS, Stream, Task


def linear_toy(tasks=(toy.TASK_A, toy.TASK_B), names=None) -> Stream:
    """Regression tasks of (x, y) points for f(x) = ax + b; the default is the article's A then B.

    Each task's test set is its own training points: the question is how well the model still fits
    the points it was taught.
    """
    tasks = tuple(tasks)
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("linear_toy needs at least one task with at least one (x, y) point")
    names = names or [chr(ord("A") + i) for i in range(len(tasks))]
    built = []
    for i, pairs in enumerate(tasks):
        data = toy.points(pairs)
        built.append(Task(i, names[i], data, data, np.ones(1, bool)))
    probes = np.concatenate([t.train["x"] for t in built])
    return Stream("linear_toy", tuple(built), "domain", "gaussian", 1, probes=probes)


def split(
    name: str, x_train, y_train, x_test, y_test, num_tasks: int, scenario: str = "task"
) -> Stream:
    """Splits a classification source into tasks of consecutive classes.

    task: all classes are outputs, each task masks the others' (multi-head);
    class: all classes are outputs and nothing is masked (one head, no task identity);
    domain: labels are relabelled to their index within the task (shared head of that size).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    classes = np.unique(y_train)
    if num_tasks < 1 or len(classes) % num_tasks:
        raise ValueError(f"cannot split {len(classes)} classes into {num_tasks} equal tasks")
    per_task = len(classes) // num_tasks
    num_outputs = per_task if scenario == "domain" else len(classes)
    tasks = []
    for t in range(num_tasks):
        own = classes[t * per_task : (t + 1) * per_task]

        def pick(x, y, own=own):
            keep = np.isin(y, own)
            y = y[keep]
            if scenario == "domain":
                y = np.searchsorted(own, y)
            return {"x": x[keep], "y": y.astype(np.int32)}

        if scenario == "task":
            mask = np.isin(np.arange(num_outputs), own)
        else:
            mask = np.ones(num_outputs, bool)
        label = "-".join(str(c) for c in own)
        tasks.append(
            Task(t, f"{name}[{label}]", pick(x_train, y_train), pick(x_test, y_test), mask)
        )
    return Stream(f"split_{name}", tuple(tasks), scenario, "categorical", num_outputs)


def split_blobs(
    num_tasks: int = 5,
    scenario: str = "task",
    num_classes: int = 10,
    dim: int = 20,
    train_per_class: int = 100,
    test_per_class: int = 50,
    spread: float = 1.0,
    seed: int = 0,
) -> Stream:
    """Synthetic Gaussian blobs split into tasks: a classification stream with no download."""
    data = synthetic.blobs(num_classes, dim, train_per_class, test_per_class, spread, seed)
    return split("blobs", *data, num_tasks=num_tasks, scenario=scenario)


def split_mnist1d(num_tasks: int = 5, scenario: str = "class") -> Stream:
    """MNIST-1D's ten digits split into tasks of consecutive classes (generated, no download)."""
    return split("mnist1d", *mnist1d.load(), num_tasks=num_tasks, scenario=scenario)


STREAMS = {"linear_toy": linear_toy, "split_blobs": split_blobs, "split_mnist1d": split_mnist1d}
