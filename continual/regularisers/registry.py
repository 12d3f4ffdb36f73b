"""Methods by name: each module of this package declares what it registers, in its own file.

A module registers its methods with a module-level `METHODS = {name: MethodSpec(...)}`. The
registry finds every module of the package by name (no list to edit), so adding a method is one
file plus its tests. The runner builds a registered method from a `Context` (what a method may
need from the experiment) and the config's hyperparameters over the spec's defaults, without
knowing the method; `contract` names the property the shared contract suite checks for it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from continual.losses import Objective
from continual.regularisers.base import Regulariser
from continual.types import Stream, as_inputs

# The properties tests/test_regularisers.py checks beyond the shared contract: "quadratic" (a
# diagonal quadratic bowl at the anchor: zero there, gradient strength * F (theta - theta*)),
# "anchored" (zero at the parameters it consolidated, positive elsewhere), "memory" (a positive
# loss on what it stored), "projection" (it changes a gradient that opposes an old task and is
# the identity while its memory is empty), "none" (nothing more).
CONTRACTS = ("quadratic", "anchored", "memory", "projection", "none")


@dataclass(frozen=True)
class Context:
    """What a method may need from the experiment, built by the runner for every method."""

    objective: Objective
    example_x: Any  # one training input (its shape and dtype size memories)
    example_y: Any  # its target
    num_tasks: int
    num_examples: int  # training examples over the whole stream
    groups: tuple[tuple[int, int], ...] | None  # (task, class) pairs; None: labels aren't classes


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: `build(context, **hyperparameters) -> Regulariser`, the
    hyperparameters it takes by default (reachable by --set in every experiment), and its
    contract (one of CONTRACTS)."""

    build: Callable[..., Regulariser]
    defaults: dict = field(default_factory=dict)
    contract: str = "none"


def _groups(stream: Stream) -> tuple[tuple[int, int], ...] | None:
    """The stream's (task, class) pairs from its training labels; None unless integer classes."""
    groups = []
    for t in stream.trained_tasks:
        y = np.asarray(t.train["y"])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            return None
        groups += [(t.id, int(c)) for c in np.unique(y)]
    return tuple(groups)


def context(objective: Objective, stream: Stream, general: dict | None = None) -> Context:
    """What a registered method may need from the stream (see continual.regularisers.registry).
    With `general` (the stream's general data, for a method that consolidates on it instead of
    the tasks) the examples are those: a memory holds at most all of them, and a method that
    keeps one slot per task (EWC's separate Fisher, GEM's memories) keeps one, filled once."""
    first = stream.tasks[0].train if general is None else general
    count = sum(len(t.train["x"]) for t in stream.trained_tasks)
    return Context(
        objective=objective,
        example_x=as_inputs(first["x"][:1])[0],
        example_y=first["y"][0],
        num_tasks=len(stream.trained_tasks) if general is None else 1,
        num_examples=count if general is None else len(general["y"]),
        groups=_groups(stream) if general is None else None,
    )


@functools.cache
def methods() -> dict[str, MethodSpec]:
    """Every registered method by name, from the METHODS of each module of the package."""
    found: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        for name, spec in getattr(module, "METHODS", {}).items():
            if name in found:
                raise RuntimeError(f"method {name!r} is registered twice (again in {info.name})")
            if spec.contract not in CONTRACTS:
                raise RuntimeError(f"method {name!r}: unknown contract {spec.contract!r}")
            found[name] = spec
    return found


def defaults() -> dict[str, dict]:
    """Every registered method's default hyperparameters: the config's `regularisers` section
    as a new experiment would write it."""
    return {name: dict(spec.defaults) for name, spec in methods().items()}


def build(name: str, context: Context, hyperparameters: dict) -> Regulariser:
    """The registered method `name`, its defaults overridden by `hyperparameters`."""
    known = methods()
    if name not in known:
        raise KeyError(f"unknown regulariser {name!r} (known: {', '.join(known)})")
    spec = known[name]
    return spec.build(context, **{**spec.defaults, **hyperparameters})
