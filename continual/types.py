"""Core data types: tasks, streams, the train state, and type aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # a pytree of arrays
Batch = dict[str, jax.Array]  # {"x", "y", "task", "weight"[, "outputs"]}, leading example axis
Key = jax.Array

SCENARIOS = ("task", "domain", "class")


class Task(NamedTuple):
    """One task of a stream: train/test dicts of arrays ({"x", "y"}) with a leading example axis.

    `pixels`, if given, is an input transform applied on the fly, `(index, weight)` of shape
    (K, D) over the flattened input: feature d of the task's input is
    sum_k weight[k, d] * x[index[k, d]] (a permutation has K = 1; a bilinear rotation K = 4).
    Tasks of a permuted or rotated stream share one input array, so it is stored once.

    `outputs`, if given, narrows what training on this task (and everything trained beside it:
    replayed examples, a Fisher) may use: e.g. a class-incremental softmax over only the classes
    seen so far (streams.train_outputs). Evaluation always reads the label mask alone.

    `eval_only` marks a task that is evaluated after every row but never trained (what a
    pretrained model knew before: probe questions, general text): it is a column of the
    evaluation but no row, stack_tasks leaves it out of the training split (its `train` is never
    read), and the joint baseline does not train on it. Such tasks come after every trained one.
    """

    id: int
    name: str
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    label_mask: np.ndarray  # bool over output units: which outputs this task may use
    pixels: tuple[np.ndarray, np.ndarray] | None = None
    outputs: np.ndarray | None = None  # bool over output units: training's restriction, or None
    eval_only: bool = False  # evaluated after every row, never trained


@dataclass(frozen=True)
class Stream:
    """A sequence of tasks, its scenario, and the likelihood its outputs are read with.

    The trained tasks come first, each a row (and a column) of the metric matrix; any
    evaluation-only tasks (Task.eval_only) follow them, columns recorded apart (Results.eval_only).
    """

    name: str
    tasks: tuple[Task, ...]
    scenario: str  # "task" | "domain" | "class"
    likelihood: str  # "gaussian" (regression, metric MSE) | "categorical" (metric accuracy)
    num_outputs: int
    probes: np.ndarray | None = None  # inputs whose predictions are recorded after every task
    # pretraining-like examples {"x", "y"} (a pretrained model's general text), shaped as the
    # tasks' inputs: what a method with `data: general` consolidates on before the first task
    general: dict | None = None

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if not self.tasks:
            raise ValueError(f"stream {self.name!r} has no tasks")
        flags = [bool(t.eval_only) for t in self.tasks]
        if flags[0]:
            raise ValueError(f"stream {self.name!r}: the first task must be trained, not eval-only")
        if flags != sorted(flags):
            raise ValueError(
                f"stream {self.name!r}: eval-only tasks must follow every trained task"
            )

    @property
    def task_names(self) -> list[str]:
        """Every task's name, evaluation-only ones included (the evaluation's columns)."""
        return [t.name for t in self.tasks]

    @property
    def trained_tasks(self) -> tuple[Task, ...]:
        """The tasks that are trained, in order: the rows of the metric matrix."""
        return tuple(t for t in self.tasks if not t.eval_only)

    @property
    def eval_tasks(self) -> tuple[Task, ...]:
        """The evaluation-only tasks (after the trained ones), or ()."""
        return tuple(t for t in self.tasks if t.eval_only)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train["x"].shape[1:])

    @property
    def token(self) -> str:
        """What one token of a language stream is ("char"; a subword stream's "token"): the
        unit the bits of its second reading are per (bits_per_char, bits_per_token)."""
        return getattr(self, "unit", "char")

    def reading(self, name: str) -> str:
        """A likelihood reading's name in this stream's token unit (bits_per_char for characters
        becomes bits_per_token for subword tokens)."""
        return name.replace("_char", f"_{self.token}")

    def view(self) -> tuple[str, np.ndarray] | None:
        """The other reading of a classification stream's accuracy, as FACIL and Mammoth report:
        task-IL streams are also scored task-agnostic (every output), class-IL streams also
        task-aware (each task's own classes); (name, label masks (T, C)), or None (domain-IL,
        regression)."""
        if self.likelihood != "categorical" or self.scenario == "domain":
            return None
        if self.scenario == "task":
            return "task_agnostic", np.ones((len(self.tasks), self.num_outputs), bool)
        own = np.zeros((len(self.tasks), self.num_outputs), bool)
        for i, t in enumerate(self.tasks):
            labels = t.test if t.eval_only else t.train  # an eval-only task has no training split
            own[i, np.unique(np.asarray(labels["y"]))] = True
        return "task_aware", own


def as_inputs(x):
    """What a model sees of stored inputs: uint8 arrays are images, read as k/255 in float32
    (so that a stream keeps a quarter of the memory); any other array is returned unchanged."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1 / 255)
    return x


class TaskData(NamedTuple):
    """Every task's split as one padded shape, its inputs stored once.

    `store` (S, ...) holds each distinct input array once; `ref` (T, N) points every example of
    every task row into it, `y` (T, N, ...) and `task` (T, N) (the task each example belongs to,
    which selects its label mask and input transform) are per example, `n` (T,) counts the valid
    ones. `pixels` = (index, weight), each (tasks, K, D), is the per-task input transform (see
    Task), or None. `outputs` (rows, C) bool is each row's training restriction (Task.outputs),
    carried by every batch of that row as "outputs" (B, C); None: no restriction. `eval_only`
    (T,) bool marks the evaluation-only tasks of a test split, which are evaluated whatever
    task the loop is on (None: there are none). Tasks of different sizes share one shape, so
    switching task changes values, never shapes; a permuted stream keeps one copy of its images.
    """

    store: jax.Array
    ref: jax.Array
    y: jax.Array
    n: jax.Array  # valid examples per task
    task: jax.Array  # (T, N) task id of every example
    pixels: tuple | None = None
    outputs: jax.Array | None = None  # (T, C) bool: what training on each row may use
    eval_only: jax.Array | None = None  # (T,) bool: evaluated always, never trained

    def _with_outputs(self, batch: dict, row) -> dict:
        if self.outputs is None:
            return batch
        n = batch["y"].shape[0]
        return {
            **batch,
            "outputs": jnp.broadcast_to(self.outputs[row], (n, *self.outputs.shape[1:])),
        }

    @property
    def num_rows(self) -> int:
        return self.ref.shape[0]

    def inputs(self, row, idx) -> jax.Array:
        """The inputs of examples `idx` of row `row`, transformed as their task says."""
        x = as_inputs(self.store[self.ref[row, idx]])
        if self.pixels is None:
            return x
        index, weight = self.pixels
        flat = x.reshape(x.shape[0], -1)
        if index.shape[0] == self.num_rows:  # rows are tasks: one transform for the whole row
            picked = flat[:, index[row]] * weight[row][None]  # (B, K, D)
        else:  # a union of tasks: each example its own task's transform
            task = self.task[row, idx]
            picked = jnp.take_along_axis(flat[:, None, :], index[task], axis=2) * weight[task]
        return picked.sum(axis=1).astype(x.dtype).reshape(x.shape)

    def task_batch(self, task) -> dict:
        """Task `task`'s whole split as one batch {"x", "y", "task", "weight"} (and "outputs" if
        the rows have them); padding weighs 0."""
        idx = jnp.arange(self.ref.shape[1])
        batch = {
            "x": self.inputs(task, idx),
            "y": self.y[task],
            "task": self.task[task],
            "weight": (idx < self.n[task]).astype(jnp.float32),
        }
        return self._with_outputs(batch, task)

    def block(self, task, start, size: int) -> dict:
        """Examples start..start+size-1 of task `task` as a batch like `task_batch`'s: those past
        the task's valid examples (or its padded size) weigh 0."""
        idx = start + jnp.arange(size)
        weight = (idx < self.n[task]).astype(jnp.float32)
        idx = jnp.minimum(idx, self.ref.shape[1] - 1)
        batch = {
            "x": self.inputs(task, idx),
            "y": self.y[task, idx],
            "task": self.task[task, idx],
            "weight": weight,
        }
        return self._with_outputs(batch, task)

    def sample(self, task, idx) -> dict:
        """Examples `idx` (all valid) of task `task` as a batch of weight 1."""
        batch = {
            "x": self.inputs(task, idx),
            "y": self.y[task, idx],
            "task": self.task[task, idx],
            "weight": jnp.ones(idx.shape, jnp.float32),
        }
        return self._with_outputs(batch, task)


class TrainState(NamedTuple):
    """Everything that changes during training; arrays only, so it can be jitted, vmapped, saved."""

    step: jax.Array
    params: Params
    opt_state: Any
    reg_state: Any
    key: Key


def stack_tasks(tasks: tuple[Task, ...] | list[Task], split: str) -> TaskData:
    """Stacks one split of every task into a padded TaskData (shared input arrays stored once).
    The training split leaves out the evaluation-only tasks (Task.eval_only), which come last:
    its rows are the trained tasks."""
    if split == "train":
        tasks = [t for t in tasks if not t.eval_only]
    parts = [getattr(t, split) for t in tasks]
    n_max = max(len(p["x"]) for p in parts)
    stored, offsets, refs = [], {}, []
    for p in parts:
        x = p["x"]
        if id(x) not in offsets:
            offsets[id(x)] = sum(len(a) for a in stored)
            stored.append(np.asarray(x))
        ref = np.zeros(n_max, np.int32)
        ref[: len(x)] = offsets[id(x)] + np.arange(len(x))
        refs.append(ref)

    def pad(a):
        out = np.zeros((n_max, *a.shape[1:]), a.dtype)
        out[: len(a)] = a
        return out

    store = stored[0] if len(stored) == 1 else np.concatenate(stored)
    y = np.stack([pad(np.asarray(p["y"])) for p in parts])
    n = np.array([len(p["x"]) for p in parts], np.int32)
    ids = np.broadcast_to(np.array([t.id for t in tasks], np.int32)[:, None], (len(parts), n_max))
    pixels = None
    if any(t.pixels is not None for t in tasks):
        if any(t.pixels is None for t in tasks):
            raise ValueError("either every task of a stream has an input transform or none has")
        pixels = tuple(np.stack([np.asarray(t.pixels[i]) for t in tasks]) for i in (0, 1))
    outputs = None
    if split == "train" and any(t.outputs is not None for t in tasks):
        outputs = np.stack([_outputs(t) for t in tasks])
    eval_only = None
    if any(t.eval_only for t in tasks):
        eval_only = np.array([bool(t.eval_only) for t in tasks])
    return TaskData(
        store, np.stack(refs), y, n, np.ascontiguousarray(ids), pixels, outputs, eval_only
    )


def _outputs(task: Task) -> np.ndarray:
    if task.outputs is None:
        return np.ones(np.shape(task.label_mask), bool)
    return np.asarray(task.outputs, bool)


def union(data: TaskData) -> TaskData:
    """All tasks of `data` as one task (the joint baseline's training set); inputs stay shared.
    Its training may use every output any task may use (all tasks are seen at once)."""
    keep = [np.arange(int(n)) for n in np.asarray(data.n)]

    def cat(a):
        return np.concatenate([np.asarray(a)[t, k] for t, k in enumerate(keep)])[None]

    return TaskData(
        store=data.store,
        ref=cat(data.ref),
        y=cat(data.y),
        n=np.array([sum(map(len, keep))], np.int32),
        task=cat(data.task),
        pixels=data.pixels,
        outputs=None if data.outputs is None else np.any(data.outputs, axis=0, keepdims=True),
    )


def _nan_to_none(x):
    """`x` (nested lists / dicts) with every NaN float replaced by None, for strict JSON."""
    if isinstance(x, float):
        return None if x != x else x
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _none_to_nan(x):
    """Nested lists of numbers with None (a missing value) read back as NaN."""
    if x is None:
        return float("nan")
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return x


def _read_missing(d: dict, keys: tuple[str, ...]) -> dict:
    """`d` with its `keys` (where present) read by _none_to_nan."""
    return {k: _none_to_nan(v) if k in keys else v for k, v in d.items()}


@dataclass
class Results:
    """One method's results on one stream; `to_json` is the results.json schema.

    A missing value (a task not evaluated: unseen with `train.evaluate = "seen"`, or `initial`
    then) is NaN here and null in JSON; `from_json` reads null back as NaN.

    `tasks`, `matrix`, `initial`, `summary`, `curves` and `views` cover the trained tasks only.
    A stream's evaluation-only tasks (Task.eval_only), never trained, are recorded apart in
    `eval_only`: {"tasks": names, "initial": (E,), "matrix": (rows, E), "values": (evals, E)
    (after every chunk, as curves' values), "views": {name: {"initial", "matrix"}}}: the same
    evaluations, their columns; absent for a stream without them.
    """

    method: str
    tasks: list[str]
    metric: str
    higher_is_better: bool
    matrix: list[list[float]]  # matrix[i][j]: metric on task j after training up to row i
    initial: list[float]  # metric on every task before any training (for FWT); NaN: unknown
    summary: dict[str, float | None]
    curves: dict[str, list]  # {"step", "training_task", "values" (per eval, per task)}
    timing: dict[str, float]
    params: list[Any] | None = None  # parameters after each row, for small models only
    probes: list[list[Any]] | None = None  # predictions on the stream's probe inputs per row
    rows: list[str] | None = None  # what each matrix row is (a task name, or "joint")
    diverged: dict[str, Any] | None = None  # {"task", "step", "last_finite_loss"} if it did
    views: dict[str, Any] | None = None  # {"task_aware" | "task_agnostic": {matrix, summary}}
    eval_only: dict[str, Any] | None = None  # the evaluation-only tasks' columns (see above)

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
        if self.views is not None:
            out["views"] = self.views
        if self.eval_only is not None:
            out["eval_only"] = self.eval_only
        return _nan_to_none(out)

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
        got = {k: d[k] for k in fields}
        got["matrix"] = _none_to_nan(got["matrix"])
        got["initial"] = _none_to_nan(got["initial"])
        got["curves"] = _read_missing(got["curves"], ("values",))
        views = d.get("views")
        if views is not None:
            views = {k: _read_missing(v, ("initial", "matrix")) for k, v in views.items()}
        eval_only = d.get("eval_only")
        if eval_only is not None:
            eval_only = _read_missing(eval_only, ("initial", "matrix", "values"))
            eval_only["views"] = {
                k: _read_missing(v, ("initial", "matrix"))
                for k, v in (eval_only.get("views") or {}).items()
            }
        return cls(
            **got,
            params=d.get("params"),
            probes=d.get("probes"),
            rows=d.get("rows"),
            diverged=d.get("diverged"),
            views=views,
            eval_only=eval_only,
        )
