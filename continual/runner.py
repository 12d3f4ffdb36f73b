"""run(config) -> results: the one experiment runner, and the only module that reads config.

For every method of the experiment: build its parts by name, then for each task train (compiled
chunks of lax.scan steps, every task evaluated between chunks) -> evaluate all tasks (row t of the
matrix) -> consolidate. The `joint` baseline trains once on the union of all tasks.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual import models, streams
from continual.config import ConfigError, number, section
from continual.evaluate import evaluate_tasks, summarize
from continual.losses import LIKELIHOODS, Objective
from continual.regularisers import Regulariser, chain, ewc, l2, replay
from continual.train import (
    init_state,
    make_chunk,
    make_consolidate,
    make_optimizer,
    reset_optimizer,
    train_task,
)
from continual.types import Results, Stream, TaskData, TrainState, stack_tasks, union

METHOD_KEYS = {"use": list, "joint": bool, "freeze": list}


def _build_l2(objective, stream, train, **kw):
    return l2(**kw)


def _build_ewc(objective, stream, train, **kw):
    return ewc(objective, num_tasks=len(stream.tasks), **kw)


def _build_replay(objective, stream, train, **kw):
    return replay(objective, example_x=train.x[0, 0], example_y=train.y[0, 0], **kw)


REGULARISERS = {"l2": _build_l2, "ewc": _build_ewc, "replay": _build_replay}


def _call(factory, what: str, *args, **kwargs):
    """Calls a factory, turning a bad keyword or value into a one-line ConfigError."""
    try:
        return factory(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def build_stream(config: dict) -> Stream:
    """The stream named in config["stream"]["name"], with the section's other keys as arguments."""
    spec = dict(section(config, "stream"))
    name = spec.pop("name", None)
    if name not in streams.STREAMS:
        raise ConfigError(f"unknown stream {name!r} (known: {', '.join(streams.STREAMS)})")
    return _call(streams.STREAMS[name], f"stream {name}", **spec)


def method_specs(config: dict, selected: list[str] | None = None) -> dict[str, dict]:
    """The methods to run, in order, each checked: {"use", "joint", "freeze"}."""
    methods = section(config, "methods")
    known_regs = section(config, "regularisers")
    names = list(selected or config.get("run") or methods)
    if not names:
        raise ConfigError("no method selected to run")
    out = {}
    for name in names:
        if name not in methods:
            raise ConfigError(
                f"unknown method {name!r} (this experiment has: {', '.join(methods)})"
            )
        spec = {"use": [], "joint": False, "freeze": [], **methods[name]}
        for key, value in spec.items():
            if key not in METHOD_KEYS:
                raise ConfigError(
                    f"methods.{name}: unknown key {key!r} (known: {', '.join(METHOD_KEYS)})"
                )
            if not isinstance(value, METHOD_KEYS[key]):
                raise ConfigError(f"methods.{name}.{key} must be a {METHOD_KEYS[key].__name__}")
        for reg in spec["use"]:
            if reg not in REGULARISERS:
                raise ConfigError(
                    f"unknown regulariser {reg!r} in method {name!r} "
                    f"(known: {', '.join(REGULARISERS)})"
                )
            if reg not in known_regs:
                raise ConfigError(
                    f"method {name!r} uses {reg!r} but config has no regularisers.{reg} section"
                )
        out[name] = spec
    return out


@dataclass
class Method:
    """Everything one method needs to run, built and validated before anything is written."""

    name: str
    objective: Objective
    optimizer: Any
    regulariser: Regulariser
    params: Any
    joint: bool
    freeze: list[str]


@functools.lru_cache(maxsize=8)
def _init_cached(model, key_data: bytes, shape: tuple, dtype: str):
    key = jax.random.wrap_key_data(jnp.asarray(np.frombuffer(key_data, np.uint32)))
    return jax.jit(model.init)(key, jnp.zeros(shape, dtype))


def _init_params(model, key, x):
    """model.init, shared by every method with the same model and key (flax modules hash by
    their fields), so that a comparison of methods starts them all from the same parameters."""
    data = np.asarray(jax.random.key_data(key)).tobytes()
    return _init_cached(model, data, tuple(x.shape), str(x.dtype))


def build_method(
    name: str, spec: dict, config: dict, stream: Stream, train: TaskData, key
) -> Method:
    """Builds the model, objective, optimizer and regulariser of one method."""
    model_spec = dict(section(config, "model"))
    model_name = model_spec.pop("name", None)
    if model_name not in models.MODELS:
        raise ConfigError(f"unknown model {model_name!r} (known: {', '.join(models.MODELS)})")
    model = _call(models.make, f"model {model_name}", model_name, stream.num_outputs, **model_spec)
    params = _init_params(model, key, train.x[0, :1])
    masks = jnp.asarray(np.stack([t.label_mask for t in stream.tasks]))
    objective = Objective(model.apply, LIKELIHOODS[stream.likelihood], masks)
    opt_spec = {k: v for k, v in section(config, "optimizer").items() if k != "reset_per_task"}
    opt_name = opt_spec.pop("name", None)
    optimizer = _call(make_optimizer, "optimizer", opt_name, **opt_spec)
    hyper = section(config, "regularisers")
    parts = []
    for reg in spec["use"]:
        kwargs = hyper[reg]
        if not isinstance(kwargs, dict):
            raise ConfigError(f"regularisers.{reg} must be a mapping of hyperparameters")
        parts.append(
            _call(REGULARISERS[reg], f"regulariser {reg}", objective, stream, train, **kwargs)
        )
    return Method(name, objective, optimizer, chain(*parts), params, spec["joint"], spec["freeze"])


def _trainable(params, freeze: list[str], frozen: bool):
    """0/1 per leaf: a leaf whose path names any of `freeze` gets 0 when `frozen`."""

    def mark(path, _):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        return jnp.float32(0.0 if frozen and any(f in name for f in freeze) else 1.0)

    return jax.tree_util.tree_map_with_path(mark, params)


def _to_list(tree):
    return jax.tree.map(lambda a: np.asarray(a).tolist(), tree)


def train_settings(config: dict) -> dict:
    """The checked train section: steps, batch_size, eval_every, record_params."""
    t = section(config, "train")
    steps = number(t.get("steps"), "train.steps", 1, integer=True)
    every = number(t.get("eval_every", steps), "train.eval_every", 1, integer=True)
    if steps % every:
        raise ConfigError(f"train.steps ({steps}) must be a multiple of train.eval_every ({every})")
    batch = number(t.get("batch_size", 0), "train.batch_size", 0, integer=True)
    return {
        "steps": steps,
        "eval_every": every,
        "batch_size": batch,
        "record_params": bool(t.get("record_params", False)),
    }


def _finish_task(method: Method, reset: bool, probes):
    """The work between tasks as one pure function: predictions on the probes, consolidation,
    and (if asked) fresh optimizer moments for the next task."""
    consolidate = make_consolidate(method.regulariser)

    def finish(state, train, task):
        out = method.objective.apply(state.params, probes)
        if not method.joint:
            state = consolidate(state, train, task)
        if reset:
            state = reset_optimizer(method.optimizer, state)
        return state, out

    return finish


@dataclass
class Plan:
    """A checked config with every part built: what `execute` runs."""

    config: dict
    stream: Stream
    train: TaskData
    test: TaskData
    methods: list[Method]
    key: Any

    @property
    def total_steps(self) -> int:
        """Training steps over all methods (for a progress bar)."""
        return train_settings(self.config)["steps"] * len(self.stream.tasks) * len(self.methods)


class Program(NamedTuple):
    """One method's compiled executables and its initial state."""

    state: TrainState
    data: TaskData  # what it trains on: the stream's tasks, or their union for `joint`
    chunk: Any  # (state, data, test, task, trainable) -> (state, losses, metric per task)
    finish: Any  # (state, train, task) -> (state, probe outputs)
    compile_s: float


def compile_method(method: Method, p: Plan) -> Program:
    """Compiles everything one method runs on device, ahead of time: the same executables then
    serve every task (a task switch changes values, never shapes)."""
    ts = train_settings(p.config)
    reset = bool(section(p.config, "optimizer").get("reset_per_task", False))
    data = union(p.train) if method.joint else p.train
    probes = p.stream.probes
    probes = jnp.zeros((1, *p.stream.input_shape)) if probes is None else jnp.asarray(probes)
    # A private copy: the compiled chunks donate (consume) their input state.
    state = init_state(method.params, method.optimizer, method.regulariser, p.key)
    state = jax.tree.map(jnp.copy, state)
    trainable = _trainable(state.params, method.freeze, False)
    task0 = jnp.int32(0)
    t0 = time.perf_counter()
    chunk = make_chunk(
        method.objective, method.optimizer, method.regulariser, ts["batch_size"], ts["eval_every"]
    )
    chunk_fn = jax.jit(chunk, donate_argnums=0).lower(state, data, p.test, task0, trainable)
    finish_fn = jax.jit(_finish_task(method, reset, probes), donate_argnums=0)
    finish_fn = finish_fn.lower(state, p.train, task0)
    return Program(state, data, chunk_fn.compile(), finish_fn.compile(), time.perf_counter() - t0)


def run_method(method: Method, program: Program, p: Plan, initial, on_steps=None) -> Results:
    """Trains one compiled method through the stream and returns its Results; `initial` is the
    metric of the untrained model on every task."""
    ts = train_settings(p.config)
    stream, train, test = p.stream, p.train, p.test
    num_steps = ts["steps"] * (len(stream.tasks) if method.joint else 1)
    state = program.state
    t0 = time.perf_counter()
    rows = ["joint"] if method.joint else stream.task_names
    matrix, params_log, probes_log = [], [], []
    curves = {"step": [0], "training_task": [0], "values": [initial.tolist()]}
    for row, row_name in enumerate(rows):
        trainable = _trainable(state.params, method.freeze, row > 0)
        num_chunks = num_steps // ts["eval_every"]
        state, values = train_task(
            program.chunk,
            state,
            program.data,
            test,
            jnp.int32(row),
            trainable,
            num_chunks,
            row_name,
            on_steps,
        )
        matrix.append(values[-1].tolist())
        for i, v in enumerate(values):
            curves["step"].append(int(row * num_steps + (i + 1) * ts["eval_every"]))
            curves["training_task"].append(row)
            curves["values"].append(v.tolist())
        if ts["record_params"]:
            params_log.append(_to_list(state.params))
        state, out = program.finish(state, train, jnp.int32(row))
        if stream.probes is not None:
            probes_log.append(np.asarray(out).tolist())
    jax.block_until_ready(state)
    lik = method.objective.likelihood
    return Results(
        method=method.name,
        tasks=stream.task_names,
        metric=lik.metric,
        higher_is_better=lik.higher_is_better,
        matrix=matrix,
        initial=initial.tolist(),
        summary=summarize(matrix, initial, lik.higher_is_better),
        curves=curves,
        timing={"compile_s": program.compile_s, "run_s": time.perf_counter() - t0},
        params=params_log or None,
        probes=probes_log or None,
        rows=rows,
    )


def plan(config: dict, selected: list[str] | None = None) -> Plan:
    """Checks the whole config and builds every part; nothing is trained or written yet."""
    seed = number(config.get("seed", 0), "seed", 0, integer=True)
    train_settings(config)
    stream = build_stream(config)
    train, test = stack_tasks(stream.tasks, "train"), stack_tasks(stream.tasks, "test")
    init_key, run_key = jax.random.split(jax.random.key(seed))
    methods = [
        build_method(name, spec, config, stream, train, init_key)
        for name, spec in method_specs(config, selected).items()
    ]
    return Plan(config, stream, train, test, methods, run_key)


def execute(p: Plan, on_steps=None, on_result=None) -> dict[str, Results]:
    """Runs every method of a plan; `on_result(results)` is called as each one finishes."""
    out = {}
    # Every method starts from the same parameters: the untrained model is evaluated once.
    first = p.methods[0]
    evaluate = jax.jit(functools.partial(evaluate_tasks, first.objective))
    initial = np.asarray(evaluate(first.params, p.test))
    for m in p.methods:
        out[m.name] = run_method(m, compile_method(m, p), p, initial, on_steps)
        if on_result is not None:
            on_result(out[m.name])
    return out


def run(config: dict, selected: list[str] | None = None) -> tuple[Stream, dict[str, Results]]:
    """Checks, builds and runs a config; returns the stream and each method's Results."""
    p = plan(config, selected)
    return p.stream, execute(p)


def run_dir_for(out: str | Path, experiment: str) -> Path:
    """runs/<experiment>/<stamp>: a fresh directory name that does not exist yet."""
    base = Path(out) / experiment
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = base / stamp, 1
    while path.exists():
        path, i = base / f"{stamp}-{i}", i + 1
    return path
