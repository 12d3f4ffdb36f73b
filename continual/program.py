"""A method compiled for a stack of members: its chunk, end-of-task and evaluation executables.

`compile_program` vmaps a method's pure chunk and end-of-task functions over the member axis of
stacked TrainStates, places them on every device and compiles ahead of time. A sweep (several
members) shards the member axis (padding the member count to a multiple of the device count); a
single run replicates its one member and shards each step's batch instead (data parallel).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from continual.devices import batch_sharding, place, shard_members
from continual.evaluate import evaluate_tasks
from continual.models.partition import taking_base
from continual.train import make_chunk, make_consolidate, reset_optimizer
from continual.types import Stream, TaskData, TrainState, union


class Settings(NamedTuple):
    """The loop's static choices."""

    steps: int  # per task (the joint baseline trains steps x tasks on the union)
    eval_every: int
    batch_size: int  # 0: whole task
    record_params: bool = False
    reset_per_task: bool = False
    evaluate: str = "all"  # "all": every task, and before training; "seen": tasks 0..row only
    sampling: str = "uniform"  # minibatches: "uniform" with replacement, "shuffle" by epochs
    # on CPU, compile with the options that keep a sweep member's arithmetic a run's, to the bit
    # (compile_lowered); off, large models compile several times faster
    exact_compile: bool = True
    eval_batch: int = 0  # evaluate each task in blocks of this many examples (0: all at once)


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
    # readings (M, T, R)): R = 1, the metric, or 2, the metric and the view (see readings)
    chunk: Any
    finish: Any  # (states, train, task) -> (states, probe outputs (M, ...))
    # (states) -> states consolidated on the method's general data, before the first task; or None
    prepare: Any
    # (params, test, upto) -> readings (M, T, R); upto (int32) is used when "seen"
    evaluate: Any
    # (name, higher_is_better) of the second reading, column 1 of the readings (see readings)
    view: tuple[str, bool] | None
    sharding: NamedSharding
    members: int  # real members; the stack may be padded past this
    compile_s: float


def finish_task(method, reset: bool, probes) -> Callable:
    """The work between tasks: probe predictions, consolidation, fresh optimizer moments."""
    consolidate = make_consolidate(method.regulariser)

    def finish(state, train, task):
        # the stream's probe predictions; none to make (and no forward pass to compile) without
        out = jnp.zeros(()) if probes is None else method.objective.apply(state.params, probes)
        if not method.joint and getattr(method, "general", None) is None:
            state = consolidate(state, train, task)
        if reset:
            state = reset_optimizer(method.optimizer, state)
        return state, out

    return finish


def member_functions(
    method, settings: Settings, probes, batch_sharding=None, stream: Stream | None = None
) -> tuple[Callable, Callable]:
    """One member's pure chunk and end-of-task functions (before vmapping); the chunk's
    evaluation reads the stream's view beside the metric (`readings`) when a stream is given."""
    chunk = make_chunk(
        method.objective,
        method.optimizer,
        method.regulariser,
        settings.batch_size,
        settings.eval_every,
        batch_sharding,
        seen_only(method, settings),
        settings.sampling,
        None if stream is None else readings(stream, method.objective)[0],
        settings.eval_batch,
    )
    return chunk, finish_task(method, settings.reset_per_task, probes)


def prepare_on(method) -> Callable:
    """The pure start of a method with general data (`method.general`, a batch {"x", "y",
    "task", "weight"}): its regularisers consolidate once on it, at the initial parameters, in
    place of every task's end (EWC's Fisher of general text at the pretrained weights, a replay
    memory of general text from the first step)."""

    def prepare(state, general):
        key = jax.random.fold_in(state.key, 4)
        reg_state = method.regulariser.consolidate(state.reg_state, state.params, general, key)
        return state._replace(reg_state=reg_state)

    return prepare


def trainable_mask(params, freeze: list[str], frozen: bool):
    """0/1 per leaf: a leaf whose path names any of `freeze` gets 0 when `frozen`."""

    def mark(path, _):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        return jnp.float32(0.0 if frozen and any(f in name for f in freeze) else 1.0)

    return jax.tree_util.tree_map_with_path(mark, params)


def probe_inputs(stream: Stream) -> jax.Array | None:
    """The stream's probe inputs, or None."""
    return None if stream.probes is None else jnp.asarray(stream.probes)


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
    chunk, finish = member_functions(method, settings, probes, split, stream)
    chunk = jax.vmap(chunk, in_axes=(0, None, None, None, None, None, None))
    finish = jax.vmap(finish, in_axes=(0, None, None))
    base = getattr(method, "base", None)  # a partitioned method's frozen params
    frozen = None if base is None else place(base.arrays, replicated)
    objectives, view = readings(stream, method.objective)
    if shared is None:
        seen = settings.evaluate == "seen"
        evaluate = _compile_evaluate(
            objectives,
            states.params,
            test,
            seen,
            base,
            frozen,
            settings.exact_compile,
            settings.eval_batch,
        )
    else:
        evaluate = shared.evaluate
    jit = functools.partial(
        _compile,
        base=base,
        frozen=frozen,
        donate=True,
        exact=settings.exact_compile,
        out_shardings=sharding,
    )
    general = getattr(method, "general", None)
    if general is not None:
        general = place(general, replicated)
        compiled = jit(jax.vmap(prepare_on(method), in_axes=(0, None)), states, general)

        def prepare(states):
            return compiled(states, general)

    program = Program(
        data,
        train,
        test,
        jit(chunk, states, data, test, task0, trainable, task0, task0),
        jit(finish, states, train, task0),
        None if general is None else prepare,
        evaluate,
        view,
        sharding,
        members,
        time.perf_counter() - t0,
    )
    return program, states


def readings(stream: Stream, objective) -> tuple[tuple, tuple[str, bool] | None]:
    """What every evaluation reads, from one forward pass: (objectives, view). `objectives` is
    (objective,), or (objective, the view's objective) when there is a second reading recorded
    after every task: the stream's other label masks (task-aware / task-agnostic accuracy), else
    the likelihood's second metric (next-token accuracy, bits per character of answers); `view`
    is that reading's (name, higher_is_better), or None."""
    view = stream.view()
    if view is not None:
        second = objective._replace(label_masks=jnp.asarray(view[1]))
        return (objective, second), (view[0], True)
    lik = objective.likelihood
    if lik.second is None:
        return (objective,), None
    name, metric_fn, higher_is_better = lik.second
    second = objective._replace(likelihood=lik._replace(metric_fn=metric_fn))
    return (objective, second), (stream.reading(name), higher_is_better)


def _compile_evaluate(
    objectives,
    params,
    test,
    seen: bool = False,
    base=None,
    frozen=None,
    exact: bool = True,
    batch_size: int = 0,
):
    """The readings of every task for every member: (params (M, ...), test, upto) -> (M, T, R),
    R objectives read from one forward pass. With `seen`, tasks after `upto` are NaN and cost
    nothing; otherwise `upto` is ignored."""

    def evaluate(p, t, upto):
        return evaluate_tasks(objectives, p, t, upto if seen else None, batch_size)

    evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
    return _compile(evaluate, params, test, jnp.int32(0), base=base, frozen=frozen, exact=exact)


def _compile(
    fn, *args, base=None, frozen=None, donate: bool = False, exact: bool = True, **jit_kwargs
):
    """`fn` jitted (donating its first argument with `donate`), lowered for `args`, compiled.
    With a partitioned method's `base` (continual.models.partition.Base) the frozen params
    `frozen` are the compiled program's first argument, which the returned callable supplies:
    closed over, they would be constants embedded in the program (unbatched under vmap either
    way, so a sweep's members share them). `exact`: compile_lowered's options (else XLA's own)."""
    if base is None:
        jitted = jax.jit(fn, donate_argnums=0 if donate else (), **jit_kwargs)
        return compile_lowered(jitted.lower(*args), exact)
    jitted = jax.jit(taking_base(fn, base), donate_argnums=1 if donate else (), **jit_kwargs)
    return functools.partial(compile_lowered(jitted.lower(frozen, *args), exact), frozen)


# XLA:CPU compiles some fusions differently for different shapes: YNNPACK takes some reductions
# (a bias gradient's sum over the batch), and the newer fusion emitters vectorise a reduction by
# its shape. Either way a sum runs in another order when a member axis is stacked in front, and a
# sweep's members drift, by rounding amplified over training, from the same members run alone.
# With both off a member's arithmetic is the same in a sweep as in a run, to the bit
# (tests/test_sweep.py; the cost is in docs/speed.md). An option this JAX's
# XLA does not know is dropped, with one warning.
_cpu_options = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False}
_RuntimeError = getattr(jax.errors, "JaxRuntimeError", RuntimeError)


def compile_lowered(lowered, exact: bool = True):
    """`lowered.compile()`, on CPU with the options above (with `exact`; without, XLA's default
    options, which compile SmolLM2-135M's training chunk in 12 s instead of 42: docs/speed.md)."""
    global _cpu_options
    if jax.default_backend() != "cpu" or not _cpu_options or not exact:
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
