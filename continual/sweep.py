"""Sweeps: hyperparameter values x seeds trained as one vmapped, compiled program.

Members differ by seed and by continuous hyperparameters (--grid): each member's config is built
and checked like a run's, its initial TrainState made, and the states are stacked on a leading
member axis that the one task loop (loop.py) vmaps and shards over the devices (those of every
process with --distributed: devices.py). Values that change the compiled program (buffer sizes,
widths, estimators, the number of steps) cannot be a member axis; they go in --outer, an outer
loop of compiled programs, as does the choice of method.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from continual import runner
from continual.config import ConfigError, check_seed, parse_value
from continual.loop import Hooks, Job, run_job
from continual.program import member_functions, probe_inputs, trainable_mask
from continual.types import Results

GRID_SECTIONS = ("regularisers", "optimizer", "model")


def _lookup(config: dict, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node = node[part]
    return node


MAX_MEMBERS = 10_000  # members of one sweep: each is a directory of results and a row


def parse_values(key: str, text: str, current: Any) -> list:
    """'1e0:1e6:7' (log-spaced, both ends included) or 'v1,v2,...' parsed like --set values."""
    text = text.strip()
    if not text:
        raise ConfigError(f"empty grid for {key!r}")
    if ":" in text:
        parts = text.split(":")
        try:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise ConfigError(f"{key}: a range is LOW:HIGH:COUNT, got {text!r}") from None
        if len(parts) != 3 or not (0 < lo < math.inf and 0 < hi < math.inf) or n < 1:
            raise ConfigError(
                f"{key}: LOW:HIGH:COUNT needs finite LOW, HIGH > 0 and COUNT >= 1, got {text!r}"
            )
        values = np.geomspace(lo, hi, n).tolist()
    else:
        items = [v.strip() for v in text.split(",")]
        if "" in items:
            raise ConfigError(f"{key} has an empty item in {text!r}")
        values = [parse_value(v, current, key) for v in items]
    if not values:
        raise ConfigError(f"empty grid for {key!r}")
    if isinstance(current, float):
        values = [float(v) for v in values]
    return values


def parse_axes(config: dict, items: list[str], what: str) -> dict[str, list]:
    """KEY=VALUES items -> {key: values}, each key checked against the config."""
    axes: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} is not of the form KEY=V1,V2,...")
        key, text = item.split("=", 1)
        if key in axes:
            raise ConfigError(f"{what} names {key!r} twice")
        if key == "seed":
            raise ConfigError("seeds are swept with --seeds N, not as a grid key")
        current = _lookup(config, key)
        if isinstance(current, dict):
            raise ConfigError(f"{key} is a section, not a value")
        if what == "--grid" and key.split(".")[0] not in GRID_SECTIONS:
            raise ConfigError(
                f"{key} cannot be a member axis (only {', '.join(GRID_SECTIONS)} values can: "
                f"the stream, training length and methods are shared); use --outer"
            )
        axes[key] = parse_values(key, text, current)
    return axes


def _with(config: dict, values: dict[str, Any]) -> dict:
    out = copy.deepcopy(config)
    for key, value in values.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class Member:
    """One member of a sweep: its method, its grid values, seed and outer values."""

    method: str
    values: dict[str, Any]
    seed: int
    outer: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        parts = [f"{k}={_fmt(v)}" for k, v in {**self.outer, **self.values}.items()]
        return ",".join([*parts, f"seed={self.seed}"])


def _program_text(method, plan, settings) -> str:
    """The jaxpr of one member's chunk and end-of-task functions: equal texts mean that two
    configs compile to the same program, differing only in state values."""
    state = runner.initial_state(method, plan.key)
    state = jax.tree.map(lambda a: a[0], state)
    trainable = trainable_mask(state.params, method.freeze, False)
    chunk, finish = member_functions(method, settings, probe_inputs(plan.stream))
    zero = jnp.int32(0)
    chunk_text = jax.make_jaxpr(chunk)(state, plan.train, plan.test, zero, trainable, zero, zero)
    return str(chunk_text) + str(jax.make_jaxpr(finish)(state, plan.train, zero))


def check_continuous(config: dict, method_name: str, grid: dict[str, list], plan) -> None:
    """Raises ConfigError for a grid key whose values change the compiled program."""
    settings = plan.settings
    spec = runner.method_specs(config, [method_name])[method_name]
    base = _program_text(plan.methods[0], plan, settings)
    for key, values in grid.items():
        for value in values:
            cfg = runner.with_defaults(_with(config, {key: value}))
            method = runner.build_method(method_name, spec, cfg, plan.stream, plan.key)
            if _program_text(method, plan, settings) != base:
                raise ConfigError(
                    f"{key} is not continuous: {key}={_fmt(value)} changes the compiled program "
                    f"(shapes or static choices), so it cannot be a vmapped member axis; "
                    f"sweep it with --outer"
                )


def member_state(config: dict, method_name: str, plan, seed: int):
    """A member's method (built from its own config) and its initial state (member axis 1)."""
    init_key, run_key = jax.random.split(jax.random.key(seed))
    spec = runner.method_specs(config, [method_name])[method_name]
    method = runner.build_method(method_name, spec, config, plan.stream, init_key)
    return method, runner.initial_state(method, run_key)


@dataclass
class Group:
    """The members of one compiled program: one method and one combination of outer values."""

    method: str
    outer: dict[str, Any]
    members: list[Member]
    config: dict
    plan: Any = None  # built again when it runs if None (one per seed would crowd memory)
    steps: int = 0  # training steps of the program

    @property
    def checkpoint_name(self) -> str:
        """The folder of this program's checkpoints: its method and a digest of its members'
        names (outer values, grid values, seeds, in order). A sweep resumed with other such
        values (--allow-config-change) starts the programs they change afresh instead of
        restoring another program's state."""
        names = json.dumps([self.method, [m.name for m in self.members]])
        return f"{self.method}-{hashlib.sha256(names.encode()).hexdigest()[:12]}"


def member_config(group: Group, member: Member) -> dict:
    """The config a member ran with: its group's (outer values in) with its grid values and seed."""
    return {**_with(group.config, member.values), "seed": member.seed}


def plan_sweep(
    config: dict,
    grid: dict[str, list],
    seeds: int,
    outer: dict[str, list],
    methods: list[str] | None,
) -> list[Group]:
    """Checks everything and lays out the programs and their members; nothing runs yet."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {seeds!r}")
    names = list(runner.method_specs(config, methods))
    base_seed = check_seed(config.get("seed", 0))
    check_seed(base_seed + seeds - 1, "seed + --seeds - 1 (the last member's seed)")
    all_seeds = [base_seed + s for s in range(seeds)]
    count = len(names) * seeds * math.prod(map(len, [*grid.values(), *outer.values()]))
    if count > MAX_MEMBERS:
        raise ConfigError(
            f"the sweep has {count} members (methods x grid points x seeds x outer values); "
            f"at most {MAX_MEMBERS}, each writes a directory of its own"
        )
    groups = []
    for combo in itertools.product(*outer.values()):
        outer_values = dict(zip(outer, combo, strict=True))
        # A stream drawn from the seed (a shuffled class order) differs between seeds, so each
        # seed is a program of its own; otherwise all seeds share one.
        # defaults again: one may follow an outer value (an MLP's initializer, model.name)
        base = runner.with_defaults(_with(config, outer_values))
        # so does a randomly initialised base a partitioned method freezes
        follows = runner.stream_follows_seed(base) or runner.base_follows_seed(base, names)
        for seed_set in [[s] for s in all_seeds] if follows else [all_seeds]:
            groups.extend(_groups(base, names, grid, outer_values, seed_set, keep=not follows))
    return groups


def _groups(config, names, grid, outer_values, seeds, keep) -> list[Group]:
    """One group per method for these outer values (already set in `config`) and seeds, each
    checked; `keep`: whether the groups keep their plans (their streams and data) until they
    run."""
    cfg = _with(config, {"seed": seeds[0]})
    groups = []
    for name in names:
        plan = runner.plan(cfg, [name])
        if plan.methods[0].retrieval is not None:
            raise ConfigError(
                f"method {name!r} retrieves facts into a reader's prompt: it runs with "
                "`continual run`, not in a sweep (choose the others with --method)"
            )
        check_continuous(cfg, name, grid, plan)
        members = [
            Member(name, dict(zip(grid, values, strict=True)), seed, outer_values)
            for values in itertools.product(*grid.values())
            for seed in seeds
        ]
        per_device = math.ceil(len(members) / jax.device_count())  # members spread over all
        runner.check_memory(
            per_device * runner.state_bytes(plan.methods[0]), f"{len(members)} members of {name!r}"
        )
        names_seen = [m.name for m in members]
        if len(set(names_seen)) != len(names_seen):
            raise ConfigError(
                "two grid values print alike (6 significant digits), so two "
                "members would share a directory; use distinct values"
            )
        steps = plan.settings.steps * len(plan.stream.trained_tasks)
        groups.append(Group(name, outer_values, members, cfg, plan if keep else None, steps))
    return groups


def run_group(
    group: Group,
    on_steps=None,
    directory=None,
    resume: bool = False,
    should_stop=None,
    on_task=None,
) -> list[Results]:
    """Trains every member of a group as one vmapped program; with a `directory` it checkpoints
    there (and resumes from it), as a run does. `on_task(name)` as each task starts."""
    plan = group.plan or runner.plan(group.config, [group.method])
    methods, states = [], []
    for member in group.members:
        cfg = member_config(group, member)
        method, state = member_state(cfg, group.method, plan, member.seed)
        methods.append(method)
        states.append(state)
    stacked = jax.tree.map(lambda *s: jnp.concatenate(s), *states)
    results, _ = run_job(
        methods[0],
        stacked,
        Job(plan.stream, plan.train, plan.test, plan.settings),
        plan.checkpoints,
        directory,
        resume,
        Hooks(on_steps, should_stop, on_task),
        names=[m.name for m in group.members],
    )
    return results


def total_steps(groups: list[Group]) -> int:
    """Training steps over all programs (each step advances every member of a program)."""
    return sum(g.steps for g in groups)


def _mean_sem(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, np.float64)
    sem = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return float(a.mean()), sem


def old_new(r: Results) -> tuple[float, float]:
    """Final metric on the old tasks (mean over all but the last) and on the newest task."""
    final = r.matrix[-1]
    return float(np.mean(final[:-1])) if len(final) > 1 else float(final[0]), float(final[-1])


def summarize_sweep(groups: list[Group], results: list[list[Results]]) -> list[dict]:
    """Mean and SEM over seeds per (method, outer values, grid point), pooling the programs of
    one method and outer values (one per seed when the stream follows the seed). Members that
    diverged are counted ("diverged") and left out of the means (None when all diverged)."""
    points: dict[tuple, list] = {}
    for group, rs in zip(groups, results, strict=True):
        for member, r in zip(group.members, rs, strict=True):
            key = (group.method, tuple(group.outer.items()), tuple(member.values.items()))
            points.setdefault(key, []).append(r)
    return [
        point_row(m, dict(outer), dict(point), runs) for (m, outer, point), runs in points.items()
    ]


def point_row(method: str, outer: dict, values: dict, runs: list[Results]) -> dict:
    """One point of a sweep table: the members of one method and values, their mean and SEM
    over seeds of the average, first-task, newest-task, older-tasks and forgetting numbers;
    members that diverged are counted ("diverged") and left out (None when all did)."""
    kept = [r for r in runs if r.diverged is None]  # a diverged member's numbers mean nothing
    row = {
        "method": method,
        "outer": outer,
        "values": values,
        "n": len(runs),
        "diverged": len(runs) - len(kept),
    }
    forgetting = [r.summary["forgetting"] for r in kept]
    stats = {
        "average": [r.summary["average"] for r in kept],
        "first": [r.matrix[-1][0] for r in kept],
        "last": [r.matrix[-1][-1] for r in kept],
        "old": [old_new(r)[0] for r in kept],
        "forgetting": None if None in forgetting else forgetting,
    }
    row.update({k: _mean_sem(v) if v else None for k, v in stats.items()})
    return row


def format_table(table: list[dict], metric: str) -> str:
    """The sweep table as text: mean ± SEM over the seeds that did not diverge."""

    def cell(v):
        return "-" if v is None else f"{v[0]:.4g} ± {v[1]:.2g}"

    head = ["method", "values", "n", f"average {metric}", "first task", "last task", "forgetting"]
    rows = [head]
    for row in table:
        values = (
            ",".join(
                f"{k.split('.')[-1]}={_fmt(v)}"
                for k, v in {**row["outer"], **row["values"]}.items()
            )
            or "-"
        )
        n = f"{row['n']}" + (f" ({row['diverged']} diverged, left out)" if row["diverged"] else "")
        rows.append(
            [
                row["method"],
                values,
                n,
                cell(row["average"]),
                cell(row["first"]),
                cell(row["last"]),
                cell(row["forgetting"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def sweep_json(groups, results, table, grid, outer, seeds) -> dict:
    """The sweep.json document. Its "tasks" are the members' task names, or null when they
    differ between members (a class order drawn from the seed), each member's then in its
    entry and its results.json."""
    first = results[0][0]
    common = all(r.tasks == first.tasks for rs in results for r in rs)
    members = []
    for group, rs in zip(groups, results, strict=True):
        for member, r in zip(group.members, rs, strict=True):
            members.append(
                {
                    "name": member.name,
                    "method": member.method,
                    "seed": member.seed,
                    "values": member.values,
                    "outer": member.outer,
                    "path": f"members/{member.method}/{member.name}",
                    "summary": r.summary,
                    "final": r.matrix[-1],
                    "diverged": r.diverged,
                    **({} if common else {"tasks": r.tasks}),
                }
            )
    return {
        "tasks": first.tasks if common else None,
        "metric": first.metric,
        "higher_is_better": first.higher_is_better,
        "grid": grid,
        "outer": outer,
        "seeds": seeds,
        "methods": sorted({g.method for g in groups}),
        "members": members,
        "table": table,
    }
