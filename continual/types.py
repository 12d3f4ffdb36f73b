"""Core data types: tasks, streams, the train state, and type aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # a pytree of arrays
Batch = dict[str, jax.Array]  # {"x", "y", "task", "weight"}, leading example axis
Key = jax.Array

SCENARIOS = ("task", "domain", "class")


class Task(NamedTuple):
    """One task of a stream: train/test dicts of arrays ({"x", "y"}) with a leading example axis."""

    id: int
    name: str
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    label_mask: np.ndarray  # bool over output units: which outputs this task may use


@dataclass(frozen=True)
class Stream:
    """A sequence of tasks, its scenario, and the likelihood its outputs are read with."""

    name: str
    tasks: tuple[Task, ...]
    scenario: str  # "task" | "domain" | "class"
    likelihood: str  # "gaussian" (regression, metric MSE) | "categorical" (metric accuracy)
    num_outputs: int
    probes: np.ndarray | None = None  # inputs whose predictions are recorded after every task

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if not self.tasks:
            raise ValueError(f"stream {self.name!r} has no tasks")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train["x"].shape[1:])


class TaskData(NamedTuple):
    """Every task's split stacked and zero-padded to one shape: x (T, N, ...), y (T, N, ...),
    n (T,), and the task each example belongs to, task (T, N) (a union of tasks mixes them).

    Tasks of different sizes share one shape, so switching task changes values, never shapes.
    """

    x: jax.Array
    y: jax.Array
    n: jax.Array  # valid examples per task
    task: jax.Array  # (T, N) task id of every example, which selects its label mask

    def task_batch(self, task) -> dict:
        """Task `task`'s whole split as one batch {"x", "y", "task", "weight"}; padding weighs 0."""
        n_max = self.x.shape[1]
        return {
            "x": self.x[task],
            "y": self.y[task],
            "task": self.task[task],
            "weight": (jnp.arange(n_max) < self.n[task]).astype(jnp.float32),
        }


class TrainState(NamedTuple):
    """Everything that changes during training; arrays only, so it can be jitted, vmapped, saved."""

    step: jax.Array
    params: Params
    opt_state: Any
    reg_state: Any
    key: Key


def stack_tasks(tasks: tuple[Task, ...] | list[Task], split: str) -> TaskData:
    """Stacks one split of every task into a padded TaskData."""
    parts = [getattr(t, split) for t in tasks]
    n_max = max(len(p["x"]) for p in parts)

    def pad(a):
        out = np.zeros((n_max, *a.shape[1:]), a.dtype)
        out[: len(a)] = a
        return out

    x = np.stack([pad(np.asarray(p["x"])) for p in parts])
    y = np.stack([pad(np.asarray(p["y"])) for p in parts])
    n = np.array([len(p["x"]) for p in parts], np.int32)
    ids = np.broadcast_to(np.array([t.id for t in tasks], np.int32)[:, None], (len(parts), n_max))
    return TaskData(x=x, y=y, n=n, task=np.ascontiguousarray(ids))


def union(data: TaskData) -> TaskData:
    """All tasks of `data` as one task (the joint baseline's training set)."""
    keep = [np.arange(int(n)) for n in np.asarray(data.n)]

    def cat(a):
        return np.concatenate([np.asarray(a)[t, k] for t, k in enumerate(keep)])[None]

    return TaskData(
        x=cat(data.x),
        y=cat(data.y),
        n=np.array([sum(map(len, keep))], np.int32),
        task=cat(data.task),
    )


@dataclass
class Results:
    """One method's results on one stream; `to_json` is the results.json schema."""

    method: str
    tasks: list[str]
    metric: str
    higher_is_better: bool
    matrix: list[list[float]]  # matrix[i][j]: metric on task j after training up to row i
    initial: list[float]  # metric on every task before any training (for FWT)
    summary: dict[str, float | None]
    curves: dict[str, list]  # {"step", "training_task", "values" (per eval, per task)}
    timing: dict[str, float]
    params: list[Any] | None = None  # parameters after each row, for small models only
    probes: list[list[Any]] | None = None  # predictions on the stream's probe inputs per row
    rows: list[str] | None = None  # what each matrix row is (a task name, or "joint")
    diverged: dict[str, Any] | None = None  # {"task", "step", "last_finite_loss"} if it did

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "tasks": self.tasks,
            "rows": self.rows or self.tasks[: len(self.matrix)],
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "matrix": self.matrix,
            "initial": self.initial,
            "summary": self.summary,
            "curves": self.curves,
            "timing": self.timing,
        }
        if self.params is not None:
            out["params"] = self.params
        if self.probes is not None:
            out["probes"] = self.probes
        if self.diverged is not None:
            out["diverged"] = self.diverged
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Results:
        fields = (
            "method",
            "tasks",
            "metric",
            "higher_is_better",
            "matrix",
            "initial",
            "summary",
            "curves",
            "timing",
        )
        return cls(
            **{k: d[k] for k in fields},
            params=d.get("params"),
            probes=d.get("probes"),
            rows=d.get("rows"),
            diverged=d.get("diverged"),
        )
