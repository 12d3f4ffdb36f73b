"""run(config) -> results: the one experiment runner, where a config becomes typed parts.

`plan` checks the whole config and builds every part by name (the stream, the model, the
optimizer, each method's regularisers from the registry of continual.regularisers) into a typed
Plan before anything is written; the library below takes explicit arguments, never a config.
`execute` runs every method of a plan through the one loop (continual.loop.run_job): for each
task train (compiled chunks of lax.scan steps, every task evaluated between chunks) -> evaluate
all tasks (row t of the matrix) -> consolidate. The `joint` baseline trains once on the union of
all tasks; a retrieval method trains its reader the same way, then answers from the store.
(The sweep, continual.sweep, plans its members over configs with these functions.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from continual import devices, models, retrieval, streams
from continual.checkpoint import CheckpointSettings
from continual.config import ConfigError, apply_overrides, check_finite, check_seed, number, section
from continual.loop import Hooks, Job, run_job
from continual.losses import LIKELIHOODS, Objective
from continual.models.partition import Base, Partition, bind, parse_train
from continual.program import EVALUATE, Settings
from continual.regularisers import Regulariser, chain, registry
from continual.streams.pretrained import (
    PretrainedStream,
    keep_probes,
    known_probes,
    probe_matches,
)
from continual.train import SAMPLING, check_batch, init_state, make_optimizer
from continual.types import Results, Stream, TaskData, TrainState, as_inputs, stack_tasks

METHOD_KEYS = {
    "use": list,
    "joint": bool,
    "freeze": list,
    "retrieval": dict,
    "train": object,
    "data": str,
    "optimizer": dict,
}
DATA = ("tasks", "general")  # what a method's regularisers consolidate on (methods.<name>.data)


def _call(factory, what: str, *args, **kwargs):
    """Calls a factory, turning a bad keyword or value into a one-line ConfigError."""
    try:
        return factory(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def base_follows_seed(config: dict, selected: list[str] | None = None) -> bool:
    """Whether a selected method trains part of a model drawn from the seed: its frozen part
    then differs between seeds, which a sweep's members cannot share (a pretrained model's
    base is the same for every seed)."""
    if section(config, "model").get("name") in models.PRETRAINED:
        return False
    return any(s["train"].kind != "all" for s in method_specs(config, selected).values())


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
        spec["class_seed"] = check_seed(config.get("seed", 0))
    elif "class_seed" in spec and spec["class_seed"] is None:
        del spec["class_seed"]  # null: the run's seed, which only a shuffled order reads
    known = spec.get("probe_keep") == "known"
    if known:  # every probe first, then those the model answers before any training
        spec["probe_keep"] = None
    stream = _call(streams.STREAMS[name], f"stream {name}", **spec)
    if known:
        stream = _keep_known_probes(config, stream)
    return _call(streams.train_outputs, f"stream {name}", stream, outputs)


def _keep_known_probes(config: dict, stream: Stream) -> Stream:
    """stream.probe_keep "known": the probe task restricted to the questions the configured
    (pretrained) model answers exactly before any fine-tuning, so that its column starts at 1."""
    if not isinstance(stream, PretrainedStream):
        raise ConfigError("stream.probe_keep 'known' applies to the pretrained_facts stream")
    spec = dict(section(config, "model"))
    name = spec.pop("name", None)
    if name not in models.PRETRAINED:
        raise ConfigError(
            f"stream.probe_keep 'known' asks a pretrained model (model.name one of "
            f"{', '.join(models.PRETRAINED)}), not {name!r}"
        )
    x = as_inputs(stream.tasks[0].train["x"][:1])
    model, params = _call(
        models.build, f"model {name}", name, stream.num_outputs, jax.random.key(0), x, **spec
    )
    keep = known_probes(stream, probe_matches(model.apply, params, stream))
    if not keep:
        raise ConfigError(
            f"stream.probe_keep 'known': the model answers none of the {len(stream.probe_ids)} "
            "probes (set stream.probes=false)"
        )
    return keep_probes(stream, keep)


def method_specs(config: dict, selected: list[str] | None = None) -> dict[str, dict]:
    """The methods to run, in order, each checked: {"use", "joint", "freeze", "retrieval",
    "train", "data", "optimizer"} (train: which parameters move, continual.models.partition;
    absent: all. data: what the regularisers consolidate on, DATA. optimizer: keys over the
    optimizer section for this method alone, e.g. a larger learning rate for LoRA)."""
    methods = section(config, "methods")
    known_regs = config.get("regularisers") or {}
    names = list(selected or config.get("run") or methods)
    if not names:
        raise ConfigError("no method selected to run")
    out = {}
    for name in names:
        if name not in methods:
            raise ConfigError(
                f"unknown method {name!r} (this experiment has: {', '.join(methods)})"
            )
        spec = {
            "use": [],
            "joint": False,
            "freeze": [],
            "retrieval": None,
            "data": "tasks",
            **methods[name],
        }
        spec["train"] = _call(parse_train, f"methods.{name}.train", spec.get("train"))
        for key, value in spec.items():
            if key not in METHOD_KEYS:
                raise ConfigError(
                    f"methods.{name}: unknown key {key!r} (known: {', '.join(METHOD_KEYS)})"
                )
            if key == "retrieval" and value is None:
                continue
            if not isinstance(value, METHOD_KEYS[key]):
                raise ConfigError(f"methods.{name}.{key} must be a {METHOD_KEYS[key].__name__}")
        if spec["data"] not in DATA:
            raise ConfigError(
                f"methods.{name}.data must be one of {', '.join(map(repr, DATA))}, "
                f"got {spec['data']!r}"
            )
        if spec["data"] == "general" and not spec["use"]:
            raise ConfigError(f"methods.{name}.data 'general' needs regularisers in 'use'")
        for reg in spec["use"]:
            if reg not in registry.methods():
                raise ConfigError(
                    f"unknown regulariser {reg!r} in method {name!r} "
                    f"(known: {', '.join(registry.methods())})"
                )
            if not isinstance(known_regs.get(reg, {}), dict):
                raise ConfigError(f"regularisers.{reg} must be a mapping of hyperparameters")
        out[name] = spec
    return out


@dataclass
class Method:
    """Everything one method needs to run, built and validated before anything is written."""

    name: str
    objective: Objective  # its apply takes the trainable parameters only
    optimizer: Any
    regulariser: Regulariser
    params: Any  # the trainable parameters at the start
    joint: bool
    freeze: list[str]
    # a reader of retrieved facts (retrieval.check_retrieval): {"k", "steps", "reader", "rows"}
    retrieval: dict | None = None
    model: Any = None
    partition: Partition = field(default_factory=Partition)  # which parameters train
    base: Base | None = None  # the parameters that do not (LoRA: all of the model's)
    # data "general": the stream's general text as one batch {"x", "y", "task", "weight"}, which
    # the regularisers consolidate on once before the first task, never on a task's data
    general: dict | None = None

    def full_params(self, trainable):
        """The model's params (adapters folded in) from trainable parameters (no member axis)."""
        return self.partition.merge(trainable, None if self.base is None else self.base.arrays)


def build_method(name: str, spec: dict, config: dict, stream: Stream, key) -> Method:
    """Builds the model (a pretrained one's params, or its init with `key`, the same for every
    method), objective, optimizer and regulariser of one method. A method that trains part of
    the parameters (spec["train"]) reads the frozen part from a Base in its objective."""
    model_spec = dict(section(config, "model"))
    model_name = model_spec.pop("name", None)
    if model_name not in models.MODELS:
        raise ConfigError(f"unknown model {model_name!r} (known: {', '.join(models.MODELS)})")
    x = as_inputs(stream.tasks[0].train["x"][:1])
    what, outputs = f"model {model_name}", stream.num_outputs
    model, params = _call(models.build, what, model_name, outputs, key, x, **model_spec)
    part = spec.get("train") or Partition()
    apply, base = model.apply, None
    if part.kind != "all":  # adapters drawn with the init key folded: the same for every method
        split = _call(part.split, f"methods.{name}.train", params, jax.random.fold_in(key, 1))
        params, base = split[0], Base(split[1])
        apply = bind(model.apply, part, base)
    masks = jnp.asarray(np.stack([t.label_mask for t in stream.tasks]))
    objective = Objective(apply, LIKELIHOODS[stream.likelihood], masks)
    opt_spec = {**section(config, "optimizer"), **(spec.get("optimizer") or {})}
    opt_spec.pop("reset_per_task", None)
    opt_name = opt_spec.pop("name", None)
    optimizer = _call(make_optimizer, "optimizer", opt_name, **opt_spec)
    hyper = config.get("regularisers") or {}
    general = _general_batch(stream, name) if spec.get("data") == "general" else None
    context = registry.context(objective, stream, general) if spec["use"] else None
    parts = [
        _call(registry.build, f"regulariser {reg}", reg, context, hyper.get(reg, {}))
        for reg in spec["use"]
    ]
    reader = spec.get("retrieval")
    if reader is not None:
        reader = _call(
            retrieval.check_retrieval,
            f"methods.{name}.retrieval",
            stream,
            spec,
            reader,
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
        reader,
        model,
        part,
        base,
        general,
    )


def _general_batch(stream: Stream, method: str) -> dict:
    """The stream's general data as the batch a regulariser consolidates on."""
    if stream.general is None:
        raise ConfigError(
            f"methods.{method}.data 'general': stream {stream.name!r} has no general data "
            "(the pretrained_facts stream has: its general text)"
        )
    n = len(stream.general["y"])
    return {
        "x": jnp.asarray(stream.general["x"]),
        "y": jnp.asarray(stream.general["y"]),
        "task": jnp.zeros((n,), jnp.int32),
        "weight": jnp.ones((n,), jnp.float32),
    }


def train_settings(config: dict) -> Settings:
    """The checked train section (and the optimizer's reset_per_task) as loop Settings.

    train.evaluate: "all" (default) evaluates every task before training and after every
    chunk; "seen" only tasks 0..t while training task t (none before training, so FWT is
    undefined; the joint baseline still evaluates every task). train.sampling: "uniform"
    (default) draws minibatches with replacement, "shuffle" by epochs without replacement
    (continual.train.make_chunk). train.exact_compile (default true): on CPU, the compile options
    that keep a sweep member's arithmetic the same as a run's, to the bit (continual.program);
    false compiles a large model several times faster, and its sweeps match runs to rounding.
    train.eval_batch (default 0: each task at once) evaluates in blocks of that many examples:
    a task's padding past its own examples costs nothing, and a large model's outputs are held
    for one block at a time (continual.evaluate.evaluate_tasks).
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
    exact = t.get("exact_compile", True)
    if not isinstance(exact, bool):
        raise ConfigError(f"train.exact_compile must be true or false, got {exact!r}")
    eval_batch = number(t.get("eval_batch", 0), "train.eval_batch", 0, integer=True)
    return Settings(steps, every, batch, record, bool(reset), evaluate, sampling, exact, eval_batch)


CHECKPOINT_DEFAULTS = dict(CheckpointSettings()._asdict())


def checkpoint_settings(config: dict) -> CheckpointSettings:
    """The checked checkpoint section: enabled (at the end of every task), every_chunks (also
    every that many chunks; 0: only at task ends), keep (the newest that many)."""
    c = {**CHECKPOINT_DEFAULTS, **config.get("checkpoint", {})}
    unknown = set(c) - set(CHECKPOINT_DEFAULTS)
    if unknown:
        raise ConfigError(f"checkpoint: unknown key {sorted(unknown)[0]!r}")
    number(c["every_chunks"], "checkpoint.every_chunks", 0, integer=True)
    number(c["keep"], "checkpoint.keep", 1, integer=True)
    if not isinstance(c["enabled"], bool):
        raise ConfigError("checkpoint.enabled must be true or false")
    return CheckpointSettings(**c)


OUTPUT_DEFAULTS = {"tensorboard": True}


def output_settings(config: dict) -> dict:
    """The checked output section: tensorboard (an event file beside every results.json,
    continual.events)."""
    given = config.get("output", {})
    if not isinstance(given, dict):
        raise ConfigError("config section 'output' is not a mapping")
    c = {**OUTPUT_DEFAULTS, **given}
    unknown = set(c) - set(OUTPUT_DEFAULTS)
    if unknown:
        raise ConfigError(f"output: unknown key {sorted(unknown)[0]!r}")
    if not isinstance(c["tensorboard"], bool):
        raise ConfigError("output.tensorboard must be true or false")
    return c


@dataclass
class Plan:
    """A checked config with every part built and its settings parsed: what `execute` runs.
    `config` is kept only to be written with the run (config.json)."""

    config: dict
    seed: int
    settings: Settings
    checkpoints: CheckpointSettings
    stream: Stream
    train: TaskData
    test: TaskData
    methods: list[Method]
    key: Any
    output: dict = field(default_factory=lambda: dict(OUTPUT_DEFAULTS))

    def steps(self, method) -> int:
        """A method's training steps (for a progress bar)."""
        per_method = self.settings.steps * len(self.stream.trained_tasks)
        steps = (method.retrieval or {}).get("steps")
        return per_method if steps is None else steps

    @property
    def total_steps(self) -> int:
        """Training steps over all methods (for a progress bar)."""
        return sum(self.steps(m) for m in self.methods)

    def job(self, method: Method) -> Job:
        """What `method` trains on: the stream, or for a retrieval method its reader's task."""
        if method.retrieval is None:
            return Job(self.stream, self.train, self.test, self.settings)
        task = method.retrieval["reader"]
        reader = Stream(
            "reader", (task,), "domain", self.stream.likelihood, self.stream.num_outputs
        )
        settings = self.settings._replace(steps=self.steps(method), record_params=False)
        return Job(
            reader, stack_tasks(reader.tasks, "train"), stack_tasks(reader.tasks, "test"), settings
        )


def plan(config: dict, selected: list[str] | None = None) -> Plan:
    """Checks the whole config and builds every part; nothing is trained or written yet."""
    seed = check_seed(config.get("seed", 0))
    settings = train_settings(config)
    checkpoints = checkpoint_settings(config)
    output = output_settings(config)
    stream = build_stream(config)
    check_batch(settings.sampling, settings.batch_size, stream.trained_tasks)
    train, test = stack_tasks(stream.tasks, "train"), stack_tasks(stream.tasks, "test")
    init_key, run_key = jax.random.split(jax.random.key(seed))
    methods = [
        build_method(name, spec, config, stream, init_key)
        for name, spec in method_specs(config, selected).items()
    ]
    for m in methods:
        if m.retrieval is not None and m.retrieval["reader"] is not None:  # trains a reader
            check_batch(settings.sampling, settings.batch_size, [m.retrieval["reader"]])
        check_memory(state_bytes(m), f"method {m.name!r}")
    return Plan(config, seed, settings, checkpoints, stream, train, test, methods, run_key, output)


def state_bytes(method: Method) -> int:
    """Bytes one member of `method` holds while it trains, at least: its state (parameters,
    optimizer and regulariser state) and a gradient of its parameters. Activations, data and
    the compiled program come on top."""
    state = jax.eval_shape(
        lambda: init_state(method.params, method.optimizer, method.regulariser, jax.random.key(0))
    )
    size = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))
    return size + sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(method.params))


def check_memory(need: int, what: str) -> None:
    """Refuses, before anything is written, a plan whose states cannot fit in memory."""
    have = devices.available_bytes()
    if have is not None and need > have:
        raise ConfigError(
            f"{what} needs at least {need / 2**30:,.1f} GiB for its state and gradients, more "
            f"than the {have / 2**30:,.1f} GiB available; make the model or the sweep smaller"
        )


def initial_state(method: Method, key) -> TrainState:
    """The state at step 0 of one member, with a leading member axis of size 1."""
    state = init_state(method.params, method.optimizer, method.regulariser, key)
    return jax.tree.map(lambda a: a[None], state)


def configure(config: dict, overrides: list[str]) -> dict:
    """An experiment's config with --set's `overrides` ("dotted.key=value") applied, then its
    defaults, so that a default follows the key it depends on (an initializer, model.name).
    Any registered method's hyperparameters can be set, with its defaults for the rest."""
    reachable = with_defaults(config)
    reachable["regularisers"] = {**registry.defaults(), **(config.get("regularisers") or {})}
    config = with_defaults(apply_overrides(config, overrides, reachable))
    check_finite(config)
    return config


DEFAULTS = (  # optional keys: (section, its names they belong to or None for all, defaults)
    (
        "train",
        None,
        {"evaluate": "all", "sampling": "uniform", "exact_compile": True, "eval_batch": 0},
    ),
    ("stream", None, {"train_outputs": "all"}),
    ("stream", streams.SPLIT_STREAMS, {"class_order": None, "class_seed": None}),
    ("model", models.INIT_MODELS, {"initializer": "lecun"}),
    ("model", ("mlp",), {"residual": False}),
    ("model", models.PRETRAINED, {"path": None, "context": None, "dtype": "float32"}),
)


def with_defaults(config: dict) -> dict:
    """The config with every optional key present (so that --set can reach it), and each used
    regulariser's registered defaults under the values the config gives. A default of another
    kind of section (left when a sweep's --outer changed its name) is dropped."""
    out = {**config, "checkpoint": {**CHECKPOINT_DEFAULTS, **config.get("checkpoint", {})}}
    if isinstance(config.get("output", {}), dict):
        out["output"] = {**OUTPUT_DEFAULTS, **config.get("output", {})}
    for name, kinds, defaults in DEFAULTS:
        section = out.get(name)
        if not isinstance(section, dict):
            continue
        if kinds is None or section.get("name") in kinds:
            out[name] = {**defaults, **section}
        else:
            out[name] = {k: v for k, v in section.items() if k not in defaults or v != defaults[k]}
    regs, known = dict(out.get("regularisers") or {}), registry.methods()
    methods = out.get("methods") if isinstance(out.get("methods"), dict) else {}
    for spec in methods.values():
        uses = spec.get("use", []) if isinstance(spec, dict) else []
        for reg in uses if isinstance(uses, list) else []:
            if reg in known and isinstance(regs.get(reg, {}), dict):
                regs[reg] = {**known[reg].defaults, **regs.get(reg, {})}
    if regs or "regularisers" in out:
        out["regularisers"] = regs
    return out


def execute(
    p: Plan,
    on_steps=None,
    on_result=None,
    run_dir: Path | None = None,
    resume: bool = False,
    should_stop=None,
    on_task=None,
) -> dict[str, Results]:
    """Runs every method of a plan (one member each); `on_result(results)` is called as each
    one finishes, `on_task(method, task)` as each of its tasks starts. A non-finite loss raises
    DivergenceError naming the task and step.

    With a `run_dir`, each method checkpoints into <run_dir>/<method>/checkpoints (see the
    config's checkpoint section); `resume` skips methods whose results.json exists and resumes
    the others from their newest readable checkpoint, giving the numbers of an uninterrupted run.
    """

    def method_hooks(name):
        task = None if on_task is None else lambda t: on_task(name, t)
        return Hooks(on_steps, should_stop, task)

    # the same model and test data: one evaluate per way of training; every method starts from
    # the same parameters (LoRA's adapters add zero), so those of one way share the evaluation
    # before training too
    out, shared, initial = {}, {}, {}
    for m in p.methods:
        done = run_dir / m.name / "results.json" if run_dir else None
        if resume and done is not None and done.exists():
            out[m.name] = Results.from_json(json.loads(done.read_text()))
            if on_steps is not None:  # a progress bar counts the finished method's steps
                on_steps(p.steps(m))
        elif m.retrieval is not None and m.retrieval["reader"] is None:  # reads as it is
            out[m.name] = retrieval.retrieval_results(
                m.name,
                p.stream,
                m.objective,
                m.params,
                m.retrieval["rows"],
                p.settings.steps,
                {},
                p.settings.eval_batch,
            )
        else:
            reader, final = m.retrieval, {}
            (out[m.name],), program = run_job(
                m,
                initial_state(m, p.key),
                p.job(m),
                p.checkpoints,
                run_dir / m.name / "checkpoints" if run_dir is not None else None,
                resume,
                method_hooks(m.name),
                stop_on_divergence=True,
                shared=None if reader else shared.get(m.partition),
                on_finish=lambda s, final=final: final.update(params=s.params),
                initial=None if reader else initial.setdefault(m.partition, {}),
            )
            if reader is None:
                shared[m.partition] = program
            else:  # the trained reader answers every fact set from the store
                params = jax.tree.map(lambda a: a[0], final["params"])
                out[m.name] = retrieval.reader_results(
                    m.name,
                    p.stream,
                    m.objective,
                    params,
                    reader,
                    p.settings.steps,
                    out[m.name],
                    p.settings.eval_batch,
                )
        if on_result is not None:
            on_result(out[m.name])
    return out


def run(config: dict, selected: list[str] | None = None) -> tuple[Stream, dict[str, Results]]:
    """Checks, builds and runs a config; returns the stream and each method's Results."""
    p = plan(config, selected)
    return p.stream, execute(p)
