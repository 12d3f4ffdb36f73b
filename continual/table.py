"""Every run and sweep under some directories as one tidy long-format table (`continual table`).

One row per number: a method's (or a sweep member's) metric on one task after one row of
training, in one reading. Columns:

  experiment, run       the experiment's name and the run or sweep directory's path (relative to
                        the directory given, or its own name when it was given itself)
  kind                  "run" or "sweep"
  method, member        the method; a sweep member's name ("" in a run)
  <key> ...             one column per swept key of any sweep read (grid and outer values; blank
                        where a run or sweep did not sweep it)
  seed                  the member's (a run's: its config's)
  row                   "initial" (before training), then each trained row's name (a task, or
                        "joint")
  task                  the evaluated task (a stream's evaluation-only tasks too)
  view                  "main", or the name of the stream's other reading (e.g. task_agnostic)
  metric                what the number is (accuracy, mse, bits-per-token ...)
  value                 the number (blank where it was not evaluated)

`summary_rows` reduces the members' summaries instead: per experiment, run, method and member
values (seeds pooled), the mean and sample standard deviation over seeds of average,
forgetting, BWT and FWT, and how many seeds (diverged members left out, and counted).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from continual.results import write_atomic
from continual.sweep import _fmt, point_row
from continual.types import Results

FIXED = ["experiment", "run", "kind", "method", "member"]
TAIL = ["seed", "row", "task", "view", "metric", "value"]
SUMMARY = ("average", "forgetting", "bwt", "fwt")


def find(directories: list[str | Path]) -> list[tuple[Path, Path]]:
    """(root, run directory) of every run and sweep under `directories` (each holds a run.json),
    in path order; a directory that does not exist, or holds none, is refused with one line."""
    found = []
    for d in map(Path, directories):
        if not d.is_dir():
            raise FileNotFoundError(f"{str(d)!r} is not a directory")
        runs = sorted(p.parent for p in d.rglob("run.json"))
        if not runs:
            raise FileNotFoundError(f"{str(d)!r} holds no run or sweep (no run.json below it)")
        found += [(d, r) for r in runs]
    return found


def members(root: Path, run_dir: Path) -> list[dict]:
    """Every finished method or sweep member of one run directory: dicts of its identity
    (FIXED, `values`, seed) and its Results."""
    info = _read_json(run_dir / "run.json")
    config = _read_json(run_dir / "config.json")
    name = run_dir.name if run_dir == root else str(run_dir.relative_to(root))
    experiment = Path(str(info.get("experiment", run_dir.parent.name))).stem
    ident = {"experiment": experiment, "run": name}
    out = []
    if info.get("kind") == "sweep":
        sweep = run_dir / "sweep.json"
        if not sweep.exists():
            print(
                f"warning: {run_dir} is an unfinished sweep (no sweep.json); left out",
                file=sys.stderr,
            )
            return []
        for m in _read_json(sweep)["members"]:
            out.append(
                {
                    **ident,
                    "kind": "sweep",
                    "method": m["method"],
                    "member": m["name"],
                    "values": {**m.get("outer", {}), **m["values"]},
                    "seed": m["seed"],
                    "results": _read_results(run_dir / m["path"] / "results.json"),
                }
            )
        return out
    for method in info.get("methods", []):
        path = run_dir / method / "results.json"
        if path.exists():  # an unfinished run: its finished methods
            out.append(
                {
                    **ident,
                    "kind": "run",
                    "method": method,
                    "member": "",
                    "values": {},
                    "seed": config.get("seed", 0),
                    "results": _read_results(path),
                }
            )
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _read_results(path: Path) -> Results:
    try:
        return Results.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def collect(directories: list[str | Path]) -> tuple[list[dict], list[str]]:
    """Every member under `directories` and the union of their swept keys, in order."""
    found = [m for root, run in find(directories) for m in members(root, run)]
    keys = list(dict.fromkeys(k for m in found for k in m["values"]))
    return found, keys


def long_rows(found: list[dict], keys: list[str]) -> list[dict]:
    """The long-format table (module docstring) of collected members."""
    rows = []
    for m in found:
        r: Results = m["results"]
        head = {k: m[k] for k in FIXED} | {k: m["values"].get(k) for k in keys}
        head["seed"] = m["seed"]
        names = ["initial", *(r.rows or r.tasks[: len(r.matrix)])]

        def add(view, metric, tasks, initial, matrix, head=head, names=names):
            for row, values in zip(names, [initial, *matrix], strict=False):
                for task, value in zip(tasks, values or [], strict=True):
                    value = None if value is None or not math.isfinite(value) else value
                    rows.append(
                        {**head, "row": row, "task": task, "view": view, "metric": metric}
                        | {"value": value}
                    )

        add("main", r.metric, r.tasks, r.initial, r.matrix)
        for view, v in (r.views or {}).items():
            add(view, view, r.tasks, v.get("initial"), v["matrix"])
        held = r.eval_only
        if held is not None:
            add("main", r.metric, held["tasks"], held.get("initial"), held["matrix"])
            for view, v in (held.get("views") or {}).items():
                add(view, view, held["tasks"], v.get("initial"), v["matrix"])
    return rows


def summary_rows(found: list[dict], keys: list[str]) -> list[dict]:
    """Per experiment, run, method and member values: n seeds, diverged, and mean and sd of
    each of SUMMARY over the seeds (diverged members left out)."""
    groups: dict[tuple, list[dict]] = {}
    for m in found:
        values = tuple(json.dumps(m["values"].get(k)) for k in keys)
        groups.setdefault((m["experiment"], m["run"], m["method"], values), []).append(m)
    rows = []
    for (experiment, run, method, _), ms in groups.items():
        kept = [m for m in ms if m["results"].diverged is None]
        row = {"experiment": experiment, "run": run, "method": method}
        row |= {k: ms[0]["values"].get(k) for k in keys}
        row |= {"metric": ms[0]["results"].metric, "n": len(kept), "diverged": len(ms) - len(kept)}
        for name in SUMMARY:
            xs = [m["results"].summary.get(name) for m in kept]
            xs = [x for x in xs if x is not None and math.isfinite(x)]
            mean = math.fsum(xs) / len(xs) if xs else None
            sd = None
            if len(xs) > 1:
                sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
            row |= {f"{name}_mean": mean, f"{name}_sd": sd}
        rows.append(row)
    return rows


def points(found: list[dict]) -> list[tuple[str, dict, list[Results]]]:
    """(label, member values, Results of every seed) per run or sweep, method and member values,
    in the order found; a label is the method, prefixed by its run where there are several."""
    groups: dict[tuple, list[dict]] = {}
    for m in found:
        key = (m["experiment"], m["run"], m["method"], json.dumps(m["values"], sort_keys=True))
        groups.setdefault(key, []).append(m)
    several = len({(m["experiment"], m["run"]) for m in found}) > 1
    out = []
    for (_, run, method, _), ms in groups.items():
        values = ms[0]["values"]
        label = " ".join([*([run] if several else []), method, *_fmt_values(values)])
        out.append((label, values, [m["results"] for m in ms]))
    return out


def _fmt_values(values: dict) -> list[str]:
    return [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in values.items()]


def point_rows(found: list[dict]) -> list[dict]:
    """The points as rows of a sweep table (continual.sweep.point_row: mean and SEM over seeds),
    each labelled as `points` does, for the sweep figures (continual.plots)."""
    rows = []
    for label, values, results in points(found):
        name = label.removesuffix(" " + " ".join(_fmt_values(values))) if values else label
        rows.append(point_row(name, {}, values, results))
    return rows


def mean_matrices(found: list[dict]) -> dict[str, Results]:
    """Per point, a Results whose matrix is the mean over its seeds that did not diverge (the
    first seed's where all did), for side-by-side heatmaps."""
    out = {}
    for label, _, results in points(found):
        kept = [r for r in results if r.diverged is None] or results[:1]
        shapes = {np.shape(r.matrix) for r in kept}
        if len(shapes) > 1:
            raise ValueError(f"{label}: its seeds' matrices differ in shape {sorted(shapes)}")
        matrix = np.mean([np.asarray(r.matrix, np.float64) for r in kept], axis=0)
        out[label] = dataclasses.replace(kept[0], matrix=matrix.tolist())
    return out


def to_csv(rows: list[dict]) -> str:
    """CSV text with a header; None is an empty cell."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def write(rows: list[dict], path: Path) -> list[Path]:
    """Writes the rows as CSV to `path`, and as Parquet beside it when pyarrow is installed;
    returns the paths written."""
    write_atomic(path, to_csv(rows))
    written = [path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    parquet = path.with_suffix(".parquet")
    tmp = parquet.with_name(f".{parquet.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(parquet)
    return [*written, parquet]


def format_rows(rows: list[dict], limit: int | None = None) -> str:
    """Fixed-width text of the rows (the first `limit` of them, then a count)."""
    if not rows:
        return "(no rows)"
    shown = rows if limit is None else rows[:limit]
    head = list(rows[0])
    cells = [head] + [[_cell(r[k]) for k in head] for r in shown]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows ({len(rows)} in all)")
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
