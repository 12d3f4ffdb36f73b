"""The one task loop, over a leading member axis: a run is one member, a sweep is many.

`compile_program` vmaps a method's pure chunk and end-of-task functions over the member axis of
stacked TrainStates, places them on every device and compiles ahead of time. A sweep (several
members) shards the member axis (padding the member count to a multiple of the device count); a
single run replicates its one member and shards each step's batch instead (data parallel).
`run_program` then trains every task, evaluating all tasks between chunks, and splits the result
into one Results per member. The devices may belong to several processes (devices.py): every
process runs this loop in step and reads results only through `to_host`, which gathers them.

With `Settings.evaluate = "seen"` a chunk of row `row` evaluates only tasks 0..row (the joint
baseline, which trains on the union, still evaluates all of them) and nothing is evaluated before
training: the row index is a value, each task a `lax.cond`, so nothing recompiles and an unseen
task costs nothing. Missing values are NaN in arrays and Results, None in Progress (JSON).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from continual.checkpoint import fault_point
from continual.devices import batch_sharding, place, shard_members, to_host
from continual.evaluate import evaluate_tasks, summarize
from continual.train import DivergenceError, make_chunk, make_consolidate, reset_optimizer
from continual.types import Results, Stream, TaskData, TrainState, union


class Settings(NamedTuple):
    """The loop's static choices."""

    steps: int  # per task (the joint baseline trains steps x tasks on the union)
    eval_every: int
    batch_size: int  # 0: whole task
    record_params: bool = False
    reset_per_task: bool = False
    evaluate: str = "all"  # "all": every task, and before training; "seen": tasks 0..row only
    sampling: str = "uniform"  # minibatches: "uniform" with replacement, "shuffle" by epochs


EVALUATE = ("all", "seen")


def seen_only(method, settings: Settings) -> bool:
    """Whether `method` evaluates only the tasks seen so far (never the joint baseline, whose
    one row has seen every task)."""
    return settings.evaluate == "seen" and not method.joint


class Program(NamedTuple):
    """A method's executables for a stack of members, compiled for their shapes and devices."""

    data: TaskData  # what it trains on: the stream's tasks, or their union for `joint`
    train: TaskData  # the stream's training and test splits, on the devices
    test: TaskData
    # (states, data, test, task, trainable, task's step, run's step) -> (states, losses (M, S),
    # metric (M, T))
    chunk: Any
    finish: Any  # (states, train, task) -> (states, probe outputs (M, ...))
    evaluate: Any  # (params, test, upto) -> metric (M, T); upto (int32) is used when "seen"
    # (name, evaluate, higher_is_better) of the second reading (see _view)
    view: tuple[str, Any, bool] | None
    sharding: NamedSharding
    members: int  # real members; the stack may be padded past this
    compile_s: float


def finish_task(method, reset: bool, probes) -> Callable:
    """The work between tasks: probe predictions, consolidation, fresh optimizer moments."""
    consolidate = make_consolidate(method.regulariser)

    def finish(state, train, task):
        out = method.objective.apply(state.params, probes)
        if not method.joint:
            state = consolidate(state, train, task)
        if reset:
            state = reset_optimizer(method.optimizer, state)
        return state, out

    return finish


def member_functions(
    method, settings: Settings, probes, batch_sharding=None
) -> tuple[Callable, Callable]:
    """One member's pure chunk and end-of-task functions (before vmapping)."""
    chunk = make_chunk(
        method.objective,
        method.optimizer,
        method.regulariser,
        settings.batch_size,
        settings.eval_every,
        batch_sharding,
        seen_only(method, settings),
        settings.sampling,
    )
    return chunk, finish_task(method, settings.reset_per_task, probes)


def trainable_mask(params, freeze: list[str], frozen: bool):
    """0/1 per leaf: a leaf whose path names any of `freeze` gets 0 when `frozen`."""

    def mark(path, _):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        return jnp.float32(0.0 if frozen and any(f in name for f in freeze) else 1.0)

    return jax.tree_util.tree_map_with_path(mark, params)


def probe_inputs(stream: Stream) -> jax.Array:
    """The stream's probe inputs, or one zero input of its dtype (token ids stay integers)."""
    if stream.probes is not None:
        return jnp.asarray(stream.probes)
    return jnp.zeros((1, *stream.input_shape), stream.tasks[0].train["x"].dtype)


def compile_program(
    method,
    states: TrainState,
    stream: Stream,
    train: TaskData,
    test: TaskData,
    settings: Settings,
    shared: Program | None = None,
) -> tuple[Program, TrainState]:
    """Compiles `method` for the stacked `states` (leading member axis); returns the program and
    the states placed on the devices (the compiled functions donate them). The evaluation
    functions are taken from `shared`, another program with the same model, test data and
    member count, when given."""
    states, sharding, members = shard_members(states)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    train, test = place((train, test), replicated)
    data = place(union(train), replicated) if method.joint else train
    probes = probe_inputs(stream)
    params0 = jax.tree.map(lambda a: a[0], states.params)
    trainable = trainable_mask(params0, method.freeze, False)
    task0 = jnp.int32(0)
    t0 = time.perf_counter()
    split = batch_sharding(sharding, settings.batch_size)
    chunk, finish = member_functions(method, settings, probes, split)
    chunk = jax.vmap(chunk, in_axes=(0, None, None, None, None, None, None))
    finish = jax.vmap(finish, in_axes=(0, None, None))
    if shared is None:
        seen = settings.evaluate == "seen"
        evaluate = _compile_evaluate(method.objective, states.params, test, seen)
        view = _view(stream, method.objective)
        if view is not None:
            view = view[0], _compile_evaluate(view[1], states.params, test, seen), view[2]
    else:
        evaluate, view = shared.evaluate, shared.view
    jit = functools.partial(jax.jit, donate_argnums=0, out_shardings=sharding)
    chunk = jit(chunk).lower(states, data, test, task0, trainable, task0, task0)
    finish = jit(finish).lower(states, train, task0)
    program = Program(
        data,
        train,
        test,
        compile_lowered(chunk),
        compile_lowered(finish),
        evaluate,
        view,
        sharding,
        members,
        time.perf_counter() - t0,
    )
    return program, states


def _view(stream: Stream, objective):
    """(name, objective, higher_is_better) of the second reading recorded after every task, or
    None: the stream's other label masks (task-aware / task-agnostic accuracy), else the
    likelihood's second metric (next-token accuracy, bits per character of answers)."""
    view = stream.view()
    if view is not None:
        return view[0], objective._replace(label_masks=jnp.asarray(view[1])), True
    lik = objective.likelihood
    if lik.second is None:
        return None
    name, metric_fn, higher_is_better = lik.second
    return name, objective._replace(likelihood=lik._replace(metric_fn=metric_fn)), higher_is_better


def _compile_evaluate(objective, params, test, seen: bool = False):
    """The metric on every task for every member: (params (M, ...), test, upto) -> (M, T).
    With `seen`, tasks after `upto` are NaN and cost nothing; otherwise `upto` is ignored."""

    def evaluate(p, t, upto):
        return evaluate_tasks(objective, p, t, upto if seen else None)

    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
    return compile_lowered(jax.jit(evaluate).lower(params, test, jnp.int32(0)))


# XLA:CPU compiles some fusions differently for different shapes: YNNPACK takes some reductions
# (a bias gradient's sum over the batch), and the newer fusion emitters vectorise a reduction by
# its shape. Either way a sum runs in another order when a member axis is stacked in front, and a
# sweep's members drift, by rounding amplified over training, from the same members run alone.
# With both off a member's arithmetic is the same in a sweep as in a run, to the bit
# (tests/test_sweep.py; the cost is in the README: Sweeps, Permuted MNIST). An option this JAX's
# XLA does not know is dropped, with one warning.
_cpu_options = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False}
_RuntimeError = getattr(jax.errors, "JaxRuntimeError", RuntimeError)


def compile_lowered(lowered):
    """`lowered.compile()`, on CPU with the options above."""
    global _cpu_options
    if jax.default_backend() != "cpu" or not _cpu_options:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=_cpu_options)
    except _RuntimeError as e:
        unknown = [k for k in _cpu_options if k in str(e)]
        if not unknown:
            raise
        warnings.warn(
            f"this XLA lacks the compile option {', '.join(unknown)}: a sweep's members may "
            "differ from the same members run alone by rounding",
            stacklevel=2,
        )
        _cpu_options = {k: v for k, v in _cpu_options.items() if k not in unknown}
        return compile_lowered(lowered)


class Interrupted(RuntimeError):
    """A stop was asked for (SIGINT / SIGTERM); the state was checkpointed first."""


@dataclass
class Progress:
    """Where the loop is and what it has recorded: with the states, all a checkpoint needs.

    JSON-serialisable (a missing value is None)."""

    row: int = 0  # the task row being trained
    chunk: int = 0  # chunks of that row already done
    step: int = 0  # steps done over all rows
    steps: list[int] = field(default_factory=list)  # step of every evaluation
    training_task: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)  # every evaluation: (members, tasks)
    last_loss: list = field(default_factory=list)  # per member
    diverged: list = field(default_factory=list)  # per member: None or {task, step, ...}
    params: list = field(default_factory=list)  # per finished row, per member (small models)
    probes: list = field(default_factory=list)  # per finished row, per member
    ends: list[int] = field(default_factory=list)  # per finished row: index of its last eval
    view: list = field(default_factory=list)  # the other reading: before training, each row

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Progress:
        return cls(**d)


def _tolist(a) -> list:
    """A float array as nested lists, NaN (a missing value) as None."""
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), None, a).tolist()


def _floats(rows) -> list:
    """Nested lists with None (missing) back to NaN."""
    return np.asarray(rows, np.float64).tolist()


def _member(host_tree, i: int):
    return jax.tree.map(lambda a: a[i].tolist(), host_tree)


def run_program(
    method,
    program: Program,
    states: TrainState,
    stream: Stream,
    train: TaskData,
    test: TaskData,
    settings: Settings,
    names: list[str] | None = None,
    on_steps: Callable | None = None,
    stop_on_divergence: bool = False,
    progress: Progress | None = None,
    checkpoint: Callable | None = None,
    checkpoint_every: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_finish: Callable[[TrainState], None] | None = None,
) -> list[Results]:
    """Trains every member through the stream; one Results per real member.

    A member whose loss goes non-finite stays frozen at its last finite state and is marked
    `diverged` (task, step, last finite loss); with `stop_on_divergence` (a single run) the
    first divergence raises DivergenceError instead. With `checkpoint(states, progress)` the
    loop saves at the end of every task and every `checkpoint_every` chunks; `progress` (from a
    checkpoint) resumes where it left off, and `should_stop()` turns into a checkpoint and
    Interrupted at the next chunk boundary. `on_finish(states)` receives the final states.
    """
    m = program.members
    train, test = program.train, program.test  # the device copies: no transfer per chunk
    names = names or [method.name] * m
    num_steps = settings.steps * (len(stream.tasks) if method.joint else 1)
    num_chunks = num_steps // settings.eval_every
    rows = ["joint"] if method.joint else stream.task_names
    seen = seen_only(method, settings)
    last = jnp.int32(len(stream.tasks) - 1)
    t0 = time.perf_counter()
    if progress is None:
        if settings.evaluate == "seen":  # nothing is evaluated before training: unknown
            initial = np.full((m, len(stream.tasks)), np.nan)
            initial_view = initial if program.view is not None else None
        else:
            initial = to_host(program.evaluate(states.params, test, last))[:m]  # (M, T)
            if program.view is not None:
                initial_view = to_host(program.view[1](states.params, test, last))[:m]
        progress = Progress(
            steps=[0],
            training_task=[0],
            values=[_tolist(initial)],
            last_loss=[None] * m,
            diverged=[None] * m,
        )
        if program.view is not None:
            progress.view.append(_tolist(initial_view))
    p = progress
    if on_steps is not None and p.step:  # resumed: a progress bar starts where the run stopped
        on_steps(p.step)

    def stop_requested():
        return should_stop is not None and should_stop()

    for row in range(p.row, len(rows)):
        row_name = rows[row]
        params0 = jax.tree.map(lambda a: a[0], states.params)
        trainable = trainable_mask(params0, method.freeze, row > 0)
        while p.chunk < num_chunks:
            start = jnp.int32(p.chunk * settings.eval_every)
            states, losses, values = program.chunk(
                states, program.data, test, jnp.int32(row), trainable, start, jnp.int32(p.step)
            )
            losses, values = to_host((losses, values))
            losses = losses[:m]
            for i in range(m):
                bad = ~np.isfinite(losses[i])
                if p.diverged[i] is None and bad.any():
                    first = int(np.argmax(bad))
                    before = float(losses[i, first - 1]) if first else p.last_loss[i]
                    p.diverged[i] = {
                        "task": row_name,
                        "step": p.step + first,
                        "last_finite_loss": before,
                    }
                    if stop_on_divergence:
                        raise DivergenceError(row_name, p.step + first, before)
                if not bad[-1]:
                    p.last_loss[i] = float(losses[i, -1])
            p.chunk += 1
            p.step += losses.shape[1]
            p.steps.append(p.step)
            p.training_task.append(row)
            p.values.append(_tolist(values[:m]))
            if on_steps is not None:
                on_steps(losses.shape[1])
            stop = stop_requested()
            due = checkpoint_every and p.chunk % checkpoint_every == 0
            if checkpoint is not None and p.chunk < num_chunks and (due or stop):
                checkpoint(states, p)
            if stop and p.chunk < num_chunks:
                if checkpoint is None:
                    raise Interrupted(
                        f"stopped during task {row_name!r} at step {p.step}; "
                        "checkpoints are off, so this method will start over"
                    )
                raise Interrupted(
                    f"stopped during task {row_name!r} at step {p.step}; checkpoint saved"
                )
            fault_point("chunk")
        if program.view is not None:
            upto = jnp.int32(row) if seen else last
            p.view.append(_tolist(to_host(program.view[1](states.params, test, upto))[:m]))
        if settings.record_params:
            params = to_host(states.params)
            p.params.append([_member(params, i) for i in range(m)])
        states, out = program.finish(states, train, jnp.int32(row))
        p.probes.append(to_host(out)[:m].tolist())
        p.ends.append(len(p.values) - 1)
        p.row, p.chunk = row + 1, 0
        if checkpoint is not None:
            checkpoint(states, p)
        fault_point("task")
        if stop_requested() and p.row < len(rows):
            saved = (
                "checkpoint saved"
                if checkpoint is not None
                else ("checkpoints are off, so this method will start over")
            )
            raise Interrupted(f"stopped after task {row_name!r} at step {p.step}; {saved}")
    jax.block_until_ready(states)
    run_s = time.perf_counter() - t0
    if on_finish is not None:
        on_finish(states)
    values_all = np.asarray(p.values, np.float64).transpose(1, 0, 2)  # (M, evals, T)
    initial = values_all[:, 0]
    ends = p.ends  # the evaluation that closed each row
    lik = method.objective.likelihood
    out = []
    for i in range(m):
        matrix = values_all[i, ends].tolist()
        results = Results(
            method=names[i],
            tasks=stream.task_names,
            metric=lik.metric,
            higher_is_better=lik.higher_is_better,
            matrix=matrix,
            initial=initial[i].tolist(),
            summary=summarize(matrix, initial[i], lik.higher_is_better),
            curves={
                "step": p.steps,
                "training_task": p.training_task,
                "values": values_all[i].tolist(),
            },
            timing={"compile_s": program.compile_s, "run_s": run_s},
            params=[row[i] for row in p.params] or None,
            probes=[row[i] for row in p.probes] if stream.probes is not None else None,
            rows=rows,
            diverged=p.diverged[i],
            views=_views(program, p, i, method.joint),
        )
        out.append(results)
    return out


def _views(program: Program, p: Progress, i: int, joint: bool) -> dict | None:
    """Member i's matrix and summary under the stream's other accuracy reading."""
    if program.view is None or len(p.view) != len(p.ends) + 1:
        return None  # e.g. resumed from a checkpoint written before views were recorded
    initial, *rows = (_floats(row[i]) for row in p.view)
    summary = summarize(rows, None if joint else initial, program.view[2])
    return {program.view[0]: {"initial": initial, "matrix": rows, "summary": summary}}
