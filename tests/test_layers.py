"""Imports run one way only (DESIGN.md's layers): data, models, types -> streams, losses,
regularisers -> train -> loop -> runner, sweep -> results, plots -> cli. Read from the source,
function-level imports included, so that no lazy import climbs."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "continual"

LAYERS = [  # a module may import its own layer's modules and lower ones, never a higher one
    ["types", "config", "devices", "data", "models", "faults"],
    ["losses", "evaluate", "streams", "regularisers", "retrieval", "generate"],
    ["train", "checkpoint"],
    ["program"],
    ["loop"],
    ["runner", "sweep"],
    ["results", "plots", "rundir", "reload", "events", "table"],
    ["cli", "__init__"],
]


def layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("continual.") else module
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"continual.{top} is in no layer: add it to LAYERS")


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("continual"):
            if node.module == "continual":  # from continual import x
                yield from (f"continual.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("continual."))


def test_no_import_climbs_a_layer():
    climbs = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.endswith(".__init__") and module != "continual.__init__":
            module = module[: -len(".__init__")]
        for target in imports(path):
            if target.startswith("continual.experiments"):
                continue  # the experiment configs, loaded by name
            if layer(target) > layer(module):
                climbs.append(f"{module} -> {target}")
    assert not climbs, "imports that climb a layer: " + ", ".join(climbs)
