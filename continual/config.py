"""Experiment configs: plain nested dicts, loaded from experiment files and overridden by --set.

An experiment file defines `get_config(arg=None) -> dict`, `ARGS` (the values `--arg` accepts,
None meaning no argument; default: none) and `SMOKE` (`{"arg": ..., "set": [...]}`, the shrink
that `--smoke` and the test suite run), and may define `report(results, stream) -> list[str]`
and `plot(results, stream, plots_dir)` for what is particular to it. Its docstring gives the
command, the runtime and where the expected numbers are (docs/). An experiment is named by the
name of one that ships with the package (experiments/) or by a path to a file anywhere, either
followed by `:ARG`. Overrides may only name keys that exist (or a registered method's defaults),
and a value is parsed by the type of the value it replaces.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import math
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import continual.experiments


class ConfigError(ValueError):
    """A bad config, override, name or value: reported as one line, exit code 2."""


def experiment_names() -> list[str]:
    """Names of the experiments that ship with the package."""
    path = continual.experiments.__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


def is_path(experiment: str) -> bool:
    """Whether `experiment` names a file (a path ending in .py) rather than a shipped one."""
    return experiment.endswith(".py") or "/" in experiment


def split_experiment(spec: str, arg: str | None = None) -> tuple[str, str | None]:
    """(experiment, arg) from "NAME", "NAME:ARG", "PATH.py" or "PATH.py:ARG" and --arg."""
    experiment, sep, inline = spec.rpartition(":")
    if not sep or not experiment:
        return spec, arg
    if arg is not None and arg != inline:
        raise ConfigError(f"the argument is given twice ({spec!r} and --arg {arg!r}); give it once")
    return experiment, inline


def experiment_name(experiment: str) -> str:
    """The name a run directory takes: a shipped experiment's name, or a file's stem."""
    return Path(experiment).stem if is_path(experiment) else experiment


def load_experiment(experiment: str) -> ModuleType:
    """The experiment module `experiment`: a shipped one by name, or a file by its path."""
    if not is_path(experiment):
        known = experiment_names()
        if experiment not in known:
            raise ConfigError(
                f"unknown experiment {experiment!r} (known: {', '.join(known)}; "
                "or give the path of a .py file)"
            )
        return importlib.import_module(f"continual.experiments.{experiment}")
    path = Path(experiment)
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"experiment file {experiment!r} does not exist or is not a .py file")
    name = f"continual_experiment_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: its first error, in one line
        del sys.modules[name]
        raise ConfigError(f"cannot load {experiment!r}: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{experiment!r} defines no get_config(arg=None) function")
    return module


def experiment_config(module: ModuleType, arg: str | None, smoke: bool = False):
    """(config, overrides): the module's config for `arg`, checked against its ARGS, and with
    `smoke` its SMOKE shrink (its argument when none is given, and its --set overrides)."""
    overrides = []
    if smoke:
        shrink = getattr(module, "SMOKE", None)
        if not isinstance(shrink, dict):
            raise ConfigError(f"{module.__name__} declares no SMOKE size")
        arg = shrink.get("arg") if arg is None else arg
        overrides = list(shrink.get("set", []))
    accepted = tuple(getattr(module, "ARGS", (None,)))
    if arg not in accepted:
        name = module.__name__.rpartition(".")[2]
        choices = ", ".join("no argument" if a is None else repr(a) for a in accepted)
        raise ConfigError(f"{name}: --arg must be one of {choices}; got {arg!r}")
    config = module.get_config(arg)
    if not isinstance(config, dict):
        raise ConfigError(f"get_config({arg!r}) must return a dict, got {type(config).__name__}")
    return config, overrides


def parse_value(text: str, current: Any, key: str) -> Any:
    """Parses an override's text by the type of the value it replaces; `null` unsets any key
    but a flag or a section (stream.probe_keep=null: every probe)."""
    if text == "null" and not isinstance(current, (bool, dict)):
        return None
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key} must be true or false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {text!r}") from None
        return finite(value, key, text)
    if isinstance(current, str):
        return text
    if isinstance(current, (list, tuple)):
        items = [t.strip() for t in text.split(",")] if text.strip() else []
        if "" in items:
            raise ConfigError(f"{key} has an empty item in {text!r}")
        if current:
            items = [parse_value(t, current[0], key) for t in items]
        return type(current)(items)
    if isinstance(current, dict):
        raise ConfigError(f"{key} is a section; set one of its keys: {', '.join(current)}")
    try:  # a None default: a Python literal (number, None, list, ...)
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return finite(value, key, text) if isinstance(value, float) else value


def finite(value: float, key: str, text: str | None = None) -> float:
    """`value` if it is a finite number; inf, 1e400 and NaN are refused with one line."""
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {text or value!r}")
    return value


def check_finite(config: Any, where: str = "") -> None:
    """Refuses a config holding a non-finite number anywhere (an experiment file's inf too)."""
    if isinstance(config, dict):
        for k, v in config.items():
            check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(config, (list, tuple)):
        for v in config:
            check_finite(v, where)
    elif isinstance(config, float):
        finite(config, where or "a config value")


def apply_overrides(config: dict, overrides: list[str], defaults: dict | None = None) -> dict:
    """A copy of `config` with every "dotted.key=value" override applied. A key missing from
    `config` but present in `defaults` (a config of the same shape) is taken from there first."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        node, default, parts = config, defaults, key.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part not in node and isinstance(default, dict):
                if part in default:
                    node[part] = copy.deepcopy(default[part])
            default = default.get(part) if isinstance(default, dict) else None
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                known = ", ".join(node) if isinstance(node, dict) else "none"
                raise ConfigError(f"unknown config key {key!r} (keys under {where}: {known})")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = parse_value(text, node[parts[-1]], key)
    return config


def section(config: dict, name: str) -> dict:
    """config[name], which must be a dict."""
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config section {name!r} is missing or not a mapping")
    return value


def number(
    value: Any,
    key: str,
    minimum: float | None = None,
    integer: bool = False,
    maximum: float | None = None,
) -> Any:
    """Checks that `value` is a finite number (an integer if asked) in [minimum, maximum]."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if isinstance(value, float):
        finite(value, key)
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    if maximum is not None and not value <= maximum:
        raise ConfigError(f"{key} must be <= {maximum}, got {value}")
    return value


MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits of a seed: 2**32 would repeat seed 0


def check_seed(value: Any, key: str = "seed") -> int:
    """A seed: an integer in [0, 2**32 - 1]."""
    return number(value, key, 0, integer=True, maximum=MAX_SEED)
