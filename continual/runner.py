"""run(config) -> results: the one experiment runner, and the only module that reads config.

For every method of the experiment: build its parts by name, then for each task train (compiled
chunks of lax.scan steps, every task evaluated between chunks) -> evaluate all tasks (row t of the
matrix) -> consolidate. The `joint` baseline trains once on the union of all tasks.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from continual import knowledge, models, streams
from continual.checkpoint import CHECKPOINT_DEFAULTS, checkpoint_settings, checkpointing
from continual.config import ConfigError, apply_overrides, number, section
from continual.loop import EVALUATE, Settings, compile_program, run_program
from continual.losses import LIKELIHOODS, Objective
from continual.regularisers import (
    Regulariser,
    agem,
    chain,
    der,
    ewc,
    gem,
    l2,
    lwf,
    mas,
    replay,
    si,
)
from continual.train import SAMPLING, check_epochs, init_state, make_optimizer
from continual.types import Results, Stream, TaskData, TrainState, as_inputs, stack_tasks

METHOD_KEYS = {"use": list, "joint": bool, "freeze": list, "retrieval": dict}


def _build_l2(objective, stream, train, **kw):
    return l2(**kw)


def _build_ewc(objective, stream, train, **kw):
    return ewc(objective, num_tasks=len(stream.tasks), **kw)


def _examples(stream):
    """One training example's input and target (their shapes and dtypes size the memories)."""
    first = stream.tasks[0].train
    return {"example_x": as_inputs(first["x"][:1])[0], "example_y": first["y"][0]}


def _memory(stream, kw):
    """The arguments of an episodic memory (replay, A-GEM): one example, and for class-balanced
    selection the stream's (task, class) groups, from its training labels."""
    total = sum(len(t.train["x"]) for t in stream.tasks)
    capacity = kw.get("capacity")
    if isinstance(capacity, int) and capacity > total:
        raise ValueError(
            f"capacity {capacity} is larger than the stream's {total} training examples"
        )
    out = _examples(stream)
    if kw.get("selection") == "class_balanced":
        groups = []
        for t in stream.tasks:
            y = np.asarray(t.train["y"])
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise ValueError("selection 'class_balanced' needs integer class labels")
            groups += [(t.id, int(c)) for c in np.unique(y)]
        out["groups"] = groups
    return out


def _build_replay(objective, stream, train, **kw):
    return replay(objective, **_memory(stream, kw), **kw)


def _build_agem(objective, stream, train, **kw):
    return agem(objective, **_memory(stream, kw), **kw)


def _build_si(objective, stream, train, **kw):
    return si(**kw)


def _build_mas(objective, stream, train, **kw):
    return mas(objective, **kw)


def _build_lwf(objective, stream, train, **kw):
    return lwf(objective, **kw)


def _build_der(objective, stream, train, **kw):
    return der(objective, **_examples(stream), **kw)


def _build_derpp(objective, stream, train, **kw):
    """DER++: DER whose beta (the weight of the memory's label loss) defaults to 0.5."""
    return der(objective, **_examples(stream), **{"beta": 0.5, **kw})


def _build_gem(objective, stream, train, **kw):
    return gem(objective, num_tasks=len(stream.tasks), **_examples(stream), **kw)


REGULARISERS = {
    "l2": _build_l2,
    "ewc": _build_ewc,
    "si": _build_si,
    "mas": _build_mas,
    "replay": _build_replay,
    "lwf": _build_lwf,
    "agem": _build_agem,
    "der": _build_der,
    "derpp": _build_derpp,
    "gem": _build_gem,
}


def _call(factory, what: str, *args, **kwargs):
    """Calls a factory, turning a bad keyword or value into a one-line ConfigError."""
    try:
        return factory(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def stream_follows_seed(config: dict) -> bool:
    """Whether the stream depends on the run's seed: a split stream with class_order "shuffled"
    and no class_seed of its own (none, or null) draws its class order from `seed`, as van de
    Ven et al.'s protocol does."""
    spec = section(config, "stream")
    return spec.get("class_order") == "shuffled" and spec.get("class_seed") is None


def build_stream(config: dict) -> Stream:
    """The stream named in config["stream"]["name"], with the section's other keys as arguments."""
    spec = dict(section(config, "stream"))
    name = spec.pop("name", None)
    outputs = spec.pop("train_outputs", "all")
    if name not in streams.STREAMS:
        raise ConfigError(f"unknown stream {name!r} (known: {', '.join(streams.STREAMS)})")
    if stream_follows_seed(config):
        spec["class_seed"] = number(config.get("seed", 0), "seed", 0, integer=True)
    elif "class_seed" in spec and spec["class_seed"] is None:
        del spec["class_seed"]  # null: the run's seed, which only a shuffled order reads
    stream = _call(streams.STREAMS[name], f"stream {name}", **spec)
    return _call(streams.train_outputs, f"stream {name}", stream, outputs)


def method_specs(config: dict, selected: list[str] | None = None) -> dict[str, dict]:
    """The methods to run, in order, each checked: {"use", "joint", "freeze", "retrieval"}."""
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
        spec = {"use": [], "joint": False, "freeze": [], "retrieval": None, **methods[name]}
        for key, value in spec.items():
            if key not in METHOD_KEYS:
                raise ConfigError(
                    f"methods.{name}: unknown key {key!r} (known: {', '.join(METHOD_KEYS)})"
                )
            if key == "retrieval" and value is None:
                continue
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
    # a reader of retrieved facts (knowledge.check_retrieval): {"k", "steps", "reader", "rows"}
    retrieval: dict | None = None


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
    params = _call(
        _init_params, f"model {model_name}", model, key, as_inputs(stream.tasks[0].train["x"][:1])
    )
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
    retrieval = spec.get("retrieval")
    if retrieval is not None:
        retrieval = _call(
            knowledge.check_retrieval,
            f"methods.{name}.retrieval",
            stream,
            spec,
            retrieval,
            train_settings(config).eval_every,
            int(config.get("seed", 0)),
            getattr(model, "context", None),
        )
    return Method(
        name,
        objective,
        optimizer,
        chain(*parts),
        params,
        spec["joint"],
        spec["freeze"],
        retrieval,
    )


def train_settings(config: dict) -> Settings:
    """The checked train section (and the optimizer's reset_per_task) as loop Settings.

    train.evaluate: "all" (default) evaluates every task before training and after every
    chunk; "seen" only tasks 0..t while training task t (none before training, so FWT is
    undefined; the joint baseline still evaluates every task). train.sampling: "uniform"
    (default) draws minibatches with replacement, "shuffle" by epochs without replacement
    (continual.train.make_chunk).
    """
    t = section(config, "train")
    steps = number(t.get("steps"), "train.steps", 1, integer=True)
    every = number(t.get("eval_every", steps), "train.eval_every", 1, integer=True)
    if steps % every:
        raise ConfigError(f"train.steps ({steps}) must be a multiple of train.eval_every ({every})")
    batch = number(t.get("batch_size", 0), "train.batch_size", 0, integer=True)
    reset = section(config, "optimizer").get("reset_per_task", False)
    evaluate = t.get("evaluate", "all")
    if evaluate not in EVALUATE:
        raise ConfigError(
            f"train.evaluate must be one of {', '.join(map(repr, EVALUATE))}, got {evaluate!r}"
        )
    sampling = t.get("sampling", "uniform")
    if sampling not in SAMPLING:
        raise ConfigError(
            f"train.sampling must be one of {', '.join(map(repr, SAMPLING))}, got {sampling!r}"
        )
    if sampling == "shuffle" and batch == 0:
        raise ConfigError("train.sampling 'shuffle' needs train.batch_size > 0 (0: whole task)")
    record = bool(t.get("record_params", False))
    return Settings(steps, every, batch, record, bool(reset), evaluate, sampling)


@dataclass
class Plan:
    """A checked config with every part built: what `execute` runs."""

    config: dict
    stream: Stream
    train: TaskData
    test: TaskData
    methods: list[Method]
    key: Any

    def steps(self, method) -> int:
        """A method's training steps (for a progress bar)."""
        per_method = train_settings(self.config).steps * len(self.stream.tasks)
        return (method.retrieval or {}).get("steps") or per_method

    @property
    def total_steps(self) -> int:
        """Training steps over all methods (for a progress bar)."""
        return sum(self.steps(m) for m in self.methods)


def plan(config: dict, selected: list[str] | None = None) -> Plan:
    """Checks the whole config and builds every part; nothing is trained or written yet."""
    seed = number(config.get("seed", 0), "seed", 0, integer=True)
    settings = train_settings(config)
    checkpoint_settings(config)
    stream = build_stream(config)
    check_epochs(settings.sampling, settings.batch_size, stream.tasks)
    train, test = stack_tasks(stream.tasks, "train"), stack_tasks(stream.tasks, "test")
    init_key, run_key = jax.random.split(jax.random.key(seed))
    methods = [
        build_method(name, spec, config, stream, train, init_key)
        for name, spec in method_specs(config, selected).items()
    ]
    for m in methods:
        if m.retrieval is not None:  # its reader trains on a task of its own
            check_epochs(settings.sampling, settings.batch_size, [m.retrieval["reader"]])
    return Plan(config, stream, train, test, methods, run_key)


def initial_state(method: Method, key) -> TrainState:
    """The state at step 0 of one member, with a leading member axis of size 1."""
    state = init_state(method.params, method.optimizer, method.regulariser, key)
    return jax.tree.map(lambda a: a[None], state)


def configure(config: dict, overrides: list[str]) -> dict:
    """An experiment's config with --set's `overrides` ("dotted.key=value") applied, then its
    defaults, so that a default follows the key it depends on (an initializer, model.name)."""
    return with_defaults(apply_overrides(config, overrides, with_defaults(config)))


DEFAULTS = (  # optional keys: (section, its names they belong to or None for all, defaults)
    ("train", None, {"evaluate": "all", "sampling": "uniform"}),
    ("stream", None, {"train_outputs": "all"}),
    ("stream", streams.SPLIT_STREAMS, {"class_order": None, "class_seed": None}),
    ("model", models.INIT_MODELS, {"initializer": "lecun"}),
    ("model", ("mlp",), {"residual": False}),
)


def with_defaults(config: dict) -> dict:
    """The config with every optional key present (so that --set can reach it). A default of
    another kind of section (left when a sweep's --outer changed its name) is dropped."""
    out = {**config, "checkpoint": {**CHECKPOINT_DEFAULTS, **config.get("checkpoint", {})}}
    for name, kinds, defaults in DEFAULTS:
        section = out.get(name)
        if not isinstance(section, dict):
            continue
        if kinds is None or section.get("name") in kinds:
            out[name] = {**defaults, **section}
        else:
            out[name] = {k: v for k, v in section.items() if k not in defaults or v != defaults[k]}
    return out


def execute(
    p: Plan,
    on_steps=None,
    on_result=None,
    run_dir: Path | None = None,
    resume: bool = False,
    should_stop=None,
) -> dict[str, Results]:
    """Runs every method of a plan (one member each); `on_result(results)` is called as each
    one finishes. A non-finite loss raises DivergenceError naming the task and step.

    With a `run_dir`, each method checkpoints into <run_dir>/<method>/checkpoints (see the
    config's checkpoint section); `resume` skips methods whose results.json exists and resumes
    the others from their newest readable checkpoint, giving the numbers of an uninterrupted run.
    """
    settings = train_settings(p.config)
    ckpt = checkpoint_settings(p.config)
    out, shared = {}, None  # every method has the same model and test data: one evaluate
    for m in p.methods:
        done = run_dir / m.name / "results.json" if run_dir else None
        if resume and done is not None and done.exists():
            out[m.name] = Results.from_json(json.loads(done.read_text()))
            if on_steps is not None:  # a progress bar counts the finished method's steps
                on_steps(p.steps(m))
            if on_result is not None:
                on_result(out[m.name])
            continue
        if m.retrieval is not None:  # trains a reader on other facts, then only retrieves
            folder = run_dir / m.name / "checkpoints" if run_dir is not None else None
            out[m.name] = knowledge.run_retrieval(
                p, m, settings, folder, resume, on_steps, should_stop
            )
            if on_result is not None:
                on_result(out[m.name])
            continue
        program, states = compile_program(
            m, initial_state(m, p.key), p.stream, p.train, p.test, settings, shared
        )
        shared = program
        progress, save = None, None
        if run_dir is not None:
            states, progress, save = checkpointing(
                run_dir / m.name / "checkpoints", p.config, program, states, resume
            )
        (out[m.name],) = run_program(
            m,
            program,
            states,
            p.stream,
            p.train,
            p.test,
            settings,
            on_steps=on_steps,
            stop_on_divergence=True,
            progress=progress,
            checkpoint=save,
            checkpoint_every=ckpt["every_chunks"],
            should_stop=should_stop,
        )
        if on_result is not None:
            on_result(out[m.name])
    return out


def run(config: dict, selected: list[str] | None = None) -> tuple[Stream, dict[str, Results]]:
    """Checks, builds and runs a config; returns the stream and each method's Results."""
    p = plan(config, selected)
    return p.stream, execute(p)
