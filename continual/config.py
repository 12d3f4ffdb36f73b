"""Experiment configs: plain nested dicts, loaded from experiments/*.py and overridden by --set.

An experiment file defines `get_config(arg=None) -> dict` (its docstring gives the command, the
expected runtime and the expected numbers) and may define `report(results, stream) -> list[str]`
and `plot(results, stream, plots_dir)` for what is particular to it. Overrides may only name keys
that exist, and a value is parsed by the type of the value it replaces.
"""

from __future__ import annotations

import ast
import copy
import importlib
import pkgutil
from types import ModuleType
from typing import Any

import continual.experiments


class ConfigError(ValueError):
    """A bad config, override, name or value: reported as one line, exit code 2."""


def experiment_names() -> list[str]:
    """Names of the experiments that ship with the package."""
    path = continual.experiments.__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


def load_experiment(name: str) -> ModuleType:
    """The experiment module called `name`."""
    known = experiment_names()
    if name not in known:
        raise ConfigError(f"unknown experiment {name!r} (known: {', '.join(known)})")
    return importlib.import_module(f"continual.experiments.{name}")


def parse_value(text: str, current: Any, key: str) -> Any:
    """Parses an override's text by the type of the value it replaces."""
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
            return float(text)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (list, tuple)):
        items = [t.strip() for t in text.split(",") if t.strip()] if text.strip() else []
        if current:
            items = [parse_value(t, current[0], key) for t in items]
        return type(current)(items)
    if isinstance(current, dict):
        raise ConfigError(f"{key} is a section; set one of its keys: {', '.join(current)}")
    try:  # a None default: a Python literal (number, None, list, ...)
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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


def number(value: Any, key: str, minimum: float | None = None, integer: bool = False) -> Any:
    """Checks that `value` is a number (an integer if asked) not below `minimum`."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value
