"""The one task loop, over a leading member axis: a run is one member, a sweep is many.

`run_job` compiles a method for a stack of members (continual.program), checkpoints it and
runs it: `run_program` trains every task, evaluating all tasks between chunks, and splits the
result into one Results per member. The devices may belong to several processes (devices.py): every
process runs this loop in step and reads results only through `to_host`, which gathers them.

With `Settings.evaluate = "seen"` a chunk of row `row` evaluates only tasks 0..row (the joint
baseline, which trains on the union, still evaluates all of them) and nothing is evaluated before
training: the row index is a value, each task a `lax.cond`, so nothing recompiles and an unseen
task costs nothing. Missing values are NaN in arrays and Results, None in Progress (JSON).

A stream's evaluation-only tasks (Task.eval_only, after the trained ones) are columns of every
evaluation, "seen" or not (and before training), but no row: the loop trains the trained tasks
only, and Results keeps their columns apart (Results.eval_only), so that the matrix and its
summary read the trained tasks alone.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual.checkpoint import CheckpointSettings, Progress, checkpointing
from continual.devices import to_host
from continual.evaluate import summarize
from continual.faults import fault_point
from continual.program import (
    Program,
    Settings,
    compile_program,
    seen_only,
    trainable_mask,
)
from continual.train import DivergenceError
from continual.types import Results, Stream, TaskData, TrainState


class Interrupted(RuntimeError):
    """A stop was asked for (SIGINT / SIGTERM); the state was checkpointed first."""


class Job(NamedTuple):
    """What a program trains on: a stream, its stacked splits, and the loop's settings."""

    stream: Stream
    train: TaskData
    test: TaskData
    settings: Settings


class Hooks(NamedTuple):
    """The caller's view of a running program: `on_steps(n)` as steps are done (a progress
    bar), `should_stop()` polled at every chunk boundary (a signal asked for a stop),
    `on_task(name)` as each task's row (or the joint one) starts."""

    on_steps: Callable[[int], Any] | None = None
    should_stop: Callable[[], bool] | None = None
    on_task: Callable[[str], Any] | None = None


NO_HOOKS = Hooks()


def run_job(
    method,
    states: TrainState,
    job: Job,
    checkpoints: CheckpointSettings,
    folder: Path | None = None,
    resume: bool = False,
    hooks: Hooks = NO_HOOKS,
    names: list[str] | None = None,
    stop_on_divergence: bool = False,
    shared: Program | None = None,
    on_finish: Callable[[TrainState], None] | None = None,
    initial: dict | None = None,
) -> tuple[list[Results], Program]:
    """Compiles `method` for the stacked `states`, checkpoints into `folder` (resuming from it),
    and trains every member through the job's stream: the one path of a run's method, a sweep's
    group and a retrieval reader. Returns one Results per real member, and the program (whose
    evaluation the next method with the same model and data may share; `initial`, a dict,
    shares the evaluation before training too: give the same one only to methods that start
    from the same parameters)."""
    program, states = compile_program(
        method, states, job.stream, job.train, job.test, job.settings, shared
    )
    progress, save = None, None
    if folder is not None and checkpoints.enabled:
        states, progress, save = checkpointing(
            folder, checkpoints.keep, program.members, states, resume
        )
    results = run_program(
        method,
        program,
        states,
        job.stream,
        job.settings,
        names=names,
        hooks=hooks,
        stop_on_divergence=stop_on_divergence,
        progress=progress,
        checkpoint=save,
        checkpoint_every=checkpoints.every_chunks,
        on_finish=on_finish,
        initial=initial,
    )
    return results, program


def _tolist(a) -> list:
    """A float array as nested lists, NaN (a missing value) as None."""
    a = np.asarray(a, np.float64)
    return np.where(np.isnan(a), None, a).tolist()


def _floats(rows) -> list:
    """Nested lists with None (missing) back to NaN."""
    return np.asarray(rows, np.float64).tolist()


def _member(host_tree, i: int):
    return jax.tree.map(lambda a: a[i].tolist(), host_tree)


def _start(
    program: Program, states: TrainState, num_tasks: int, settings: Settings, known=None
) -> Progress:
    """The progress of a fresh run: every task evaluated before training (with
    `evaluate = "seen"` only the evaluation-only tasks, the others unknown). `known`, a dict
    shared by methods that start from the same parameters with the same evaluation, holds the
    first one's initial evaluation for the others."""
    m, last = program.members, jnp.int32(num_tasks - 1)
    initial = np.full((m, num_tasks, 1 + (program.view is not None)), np.nan)
    if settings.evaluate == "seen" and program.test.eval_only is not None:
        last = jnp.int32(-1)  # no task is seen yet: the evaluation-only tasks alone
    if known is not None and "initial" in known:
        initial = known["initial"]
    elif settings.evaluate != "seen" or program.test.eval_only is not None:
        initial = to_host(program.evaluate(states.params, program.test, last))[:m]  # (M, T, R)
    if known is not None:
        known["initial"] = initial
    p = Progress(
        steps=[0],
        training_task=[0],
        values=[_tolist(initial[..., 0])],
        last_loss=[None] * m,
        diverged=[None] * m,
    )
    if program.view is not None:
        p.view.append(_tolist(initial[..., 1]))
    return p


def _record_chunk(p: Progress, terms, values, row: int, row_name: str, raise_first: bool):
    """Adds a chunk's losses (a dict of (M, S): "total" and its parts, continual.train.
    make_chunk) and metric (M, T) to the progress: each part's mean over the chunk's applied
    steps; the first non-finite total loss of a member marks it diverged (or, with
    `raise_first`, raises DivergenceError)."""
    losses = terms["total"]
    with warnings.catch_warnings():  # a member with no applied step: NaN, its mean unknown
        warnings.simplefilter("ignore", RuntimeWarning)
        p.losses.append({k: _tolist(np.nanmean(v, axis=1)) for k, v in terms.items()})
    for i in range(len(losses)):
        bad = ~np.isfinite(losses[i])
        if p.diverged[i] is None and bad.any():
            first = int(np.argmax(bad))
            before = float(losses[i, first - 1]) if first else p.last_loss[i]
            p.diverged[i] = {"task": row_name, "step": p.step + first, "last_finite_loss": before}
            if raise_first:
                raise DivergenceError(row_name, p.step + first, before)
        if not bad[-1]:
            p.last_loss[i] = float(losses[i, -1])
    p.chunk += 1
    p.step += losses.shape[1]
    p.steps.append(p.step)
    p.training_task.append(row)
    p.values.append(_tolist(values))


def _stopped(where: str, p: Progress, saved: bool) -> Interrupted:
    if saved:
        return Interrupted(f"stopped {where} at step {p.step}; checkpoint saved")
    return Interrupted(
        f"stopped {where} at step {p.step}; checkpoints are off, so this method will start over"
    )


def run_program(
    method,
    program: Program,
    states: TrainState,
    stream: Stream,
    settings: Settings,
    names: list[str] | None = None,
    hooks: Hooks = NO_HOOKS,
    stop_on_divergence: bool = False,
    progress: Progress | None = None,
    checkpoint: Callable | None = None,
    checkpoint_every: int = 0,
    on_finish: Callable[[TrainState], None] | None = None,
    initial: dict | None = None,
) -> list[Results]:
    """Trains every member through the stream; one Results per real member.

    A member whose loss goes non-finite stays frozen at its last finite state and is marked
    `diverged` (task, step, last finite loss); with `stop_on_divergence` (a single run) the
    first divergence raises DivergenceError instead. With `checkpoint(states, progress)` the
    loop saves at the end of every task and every `checkpoint_every` chunks; `progress` (from a
    checkpoint) resumes where it left off, and `hooks.should_stop()` turns into a checkpoint and
    Interrupted at the next chunk boundary. `on_finish(states)` receives the final states.
    `initial` shares the evaluation before training between methods (see `_start`).
    """
    m, test = program.members, program.test  # the device copies: no transfer per chunk
    trained = [t.name for t in stream.trained_tasks]  # the rows; eval-only tasks follow them
    num_chunks = settings.steps * (len(trained) if method.joint else 1) // settings.eval_every
    rows = ["joint"] if method.joint else trained
    seen, last = seen_only(method, settings), jnp.int32(len(stream.tasks) - 1)
    t0 = time.perf_counter()
    if progress is None and program.prepare is not None:  # a fresh start: before any task
        states = program.prepare(states)
    p = progress or _start(program, states, len(stream.tasks), settings, initial)
    if hooks.on_steps is not None and p.step:  # resumed: a bar starts where the run stopped
        hooks.on_steps(p.step)

    def stop_requested():
        return hooks.should_stop is not None and hooks.should_stop()

    for row in range(p.row, len(rows)):
        row_name = rows[row]
        if hooks.on_task is not None:
            hooks.on_task(row_name)
        params0 = jax.tree.map(lambda a: a[0], states.params)
        trainable = trainable_mask(params0, method.freeze, row > 0)
        values = None  # the row's latest readings (M, T, R)
        while p.chunk < num_chunks:
            start = jnp.int32(p.chunk * settings.eval_every)
            states, losses, values = program.chunk(
                states, program.data, test, jnp.int32(row), trainable, start, jnp.int32(p.step)
            )
            losses, values = to_host(jax.tree.map(lambda a: a[:m], (losses, values)))
            _record_chunk(p, losses, values[..., 0], row, row_name, stop_on_divergence)
            if hooks.on_steps is not None:
                hooks.on_steps(losses["total"].shape[1])
            stop = stop_requested()
            due = checkpoint_every and p.chunk % checkpoint_every == 0
            if checkpoint is not None and p.chunk < num_chunks and (due or stop):
                checkpoint(states, p)
            if stop and p.chunk < num_chunks:
                raise _stopped(f"during task {row_name!r}", p, checkpoint is not None)
            fault_point("chunk")
        if program.view is not None:  # read beside the metric by the row's last evaluation
            if values is None:  # the row ran no chunk (no steps)
                upto = jnp.int32(row) if seen else last
                values = to_host(program.evaluate(states.params, test, upto))[:m]
            p.view.append(_tolist(values[..., 1]))
        if settings.record_params:
            params = to_host(states.params)
            p.params.append([_member(params, i) for i in range(m)])
        states, out = program.finish(states, program.train, jnp.int32(row))
        p.probes.append(to_host(out)[:m].tolist())
        p.ends.append(len(p.values) - 1)
        p.row, p.chunk = row + 1, 0
        if checkpoint is not None:
            checkpoint(states, p)
        fault_point("task")
        if stop_requested() and p.row < len(rows):
            raise _stopped(f"after task {row_name!r}", p, checkpoint is not None)
    jax.block_until_ready(states)
    run_s = time.perf_counter() - t0
    if on_finish is not None:
        on_finish(states)
    return _results(method, program, p, stream, names or [method.name] * m, rows, run_s)


def _results(method, program: Program, p: Progress, stream: Stream, names, rows, run_s):
    """One Results per real member from a finished run's progress; the evaluation-only tasks'
    columns (the last ones) go to Results.eval_only, the rest is about the trained tasks."""
    r = len(stream.trained_tasks)
    evaluated = np.asarray(p.values, np.float64).transpose(1, 0, 2)  # (M, evals, T)
    values_all, held = evaluated[..., :r], evaluated[..., r:]
    initial = values_all[:, 0]
    lik = method.objective.likelihood
    out = []
    for i in range(program.members):
        matrix = values_all[i, p.ends].tolist()  # the evaluation that closed each row
        results = Results(
            method=names[i],
            tasks=stream.task_names[:r],
            metric=lik.metric,
            higher_is_better=lik.higher_is_better,
            matrix=matrix,
            initial=initial[i].tolist(),
            summary=summarize(matrix, initial[i], lik.higher_is_better),
            curves={
                "step": p.steps,
                "training_task": p.training_task,
                "values": values_all[i].tolist(),
                "losses": _losses(p, i),
            },
            timing={"compile_s": program.compile_s, "run_s": run_s},
            params=[row[i] for row in p.params] or None,
            probes=[row[i] for row in p.probes] if stream.probes is not None else None,
            rows=rows,
            diverged=p.diverged[i],
            views=_views(program, p, i, method.joint, r),
            eval_only=_eval_only(program, p, stream, held[i], i, r),
        )
        out.append(results)
    return out


def _losses(p: Progress, i: int) -> dict[str, list]:
    """Member i's chunk-mean losses, one per evaluation as curves' values: None at the evaluation
    before training (and at the chunks of a run resumed from a checkpoint that did not record
    them)."""
    names = list(dict.fromkeys(k for chunk in p.losses for k in chunk))
    pad = [None] * (len(p.steps) - len(p.losses))
    return {k: pad + [chunk.get(k, [None] * (i + 1))[i] for chunk in p.losses] for k in names}


def _view_rows(program: Program, p: Progress, i: int) -> list | None:
    """Member i's second reading of every task, before training and after every row, or None."""
    if program.view is None or len(p.view) != len(p.ends) + 1:
        return None  # e.g. resumed from a checkpoint written before views were recorded
    return [_floats(row[i]) for row in p.view]


def _views(program: Program, p: Progress, i: int, joint: bool, r: int) -> dict | None:
    """Member i's matrix and summary under the stream's other reading (its `r` trained tasks)."""
    view = _view_rows(program, p, i)
    if view is None:
        return None
    initial, *rows = (row[:r] for row in view)
    summary = summarize(rows, None if joint else initial, program.view[1])
    return {program.view[0]: {"initial": initial, "matrix": rows, "summary": summary}}


def _eval_only(program: Program, p: Progress, stream: Stream, held, i: int, r: int):
    """Member i's columns of the evaluation-only tasks (Results.eval_only), or None: `held`
    (evals, E) is every evaluation of them, the first before training."""
    if not stream.eval_tasks:
        return None
    out = {
        "tasks": stream.task_names[r:],
        "initial": held[0].tolist(),
        "matrix": held[p.ends].tolist(),
        "values": held.tolist(),
        "views": {},
    }
    view = _view_rows(program, p, i)
    if view is not None:
        initial, *rows = (row[r:] for row in view)
        out["views"][program.view[0]] = {"initial": initial, "matrix": rows}
    return out
