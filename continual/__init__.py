"""continual: continual learning in JAX, from the article's linear toy to vmapped sweeps."""

import importlib

_HOMES = {  # the public names, imported from their modules on first use (PEP 562), so that
    # `import continual.cli` stays light and the command obeys Ctrl-C from its first moment
    "continual.evaluate": ("summarize",),
    "continual.losses": ("Objective", "categorical", "gaussian"),
    "continual.models": ("MLP", "Linear"),
    "continual.regularisers": (
        "Regulariser",
        "chain",
        "ewc",
        "identity",
        "l2",
        "regulariser",
        "replay",
    ),
    "continual.runner": ("execute", "plan", "run"),
    "continual.streams": ("linear_toy", "split", "split_blobs", "split_mnist1d"),
    "continual.train": ("make_train_step",),
    "continual.types": ("Results", "Stream", "Task", "TaskData", "TrainState"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'continual' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


__all__ = [
    "MLP",
    "Linear",
    "Objective",
    "Regulariser",
    "Results",
    "Stream",
    "Task",
    "TaskData",
    "TrainState",
    "categorical",
    "chain",
    "ewc",
    "execute",
    "gaussian",
    "identity",
    "l2",
    "linear_toy",
    "make_train_step",
    "plan",
    "regulariser",
    "replay",
    "run",
    "split",
    "split_blobs",
    "split_mnist1d",
    "summarize",
]
