"""Run directories and their files: config.json, results.json per method, curves.csv, comparison,
tokenizer.json; a run's trained language model read back.

Layout of `runs/<experiment>/<stamp>/`:
  config.json            the full config the run used
  comparison.json        every method's summary, in run order
  <method>/results.json  the Results schema (tasks, metric, matrix, summary, curves, timing, ...)
  <method>/curves.csv    step, training_task, one column per task
  <method>/events.out.tfevents.continual  the same as TensorBoard events (continual.events)
  tokenizer.json         the stream's tokenizer, when it is text (read by `continual generate`)
  plots/*.png
Every file is written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from continual.types import Results


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def curves_csv(results: Results) -> str:
    """The within-task curves as CSV text: step, training_task, one column per task."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "training_task", *results.tasks])
    c = results.curves
    for step, task, values in zip(c["step"], c["training_task"], c["values"], strict=True):
        w.writerow([step, task, *(f"{v:.6g}" for v in values)])
    return buf.getvalue()


def save_results(run_dir: Path, results: Results, events_config: dict | None = None) -> None:
    """Writes <run_dir>/<method>/curves.csv, with an `events_config` a TensorBoard event file
    (continual.events, the config shown as its text), then results.json (which marks the method
    finished)."""
    folder = run_dir / results.method
    write_atomic(folder / "curves.csv", curves_csv(results))
    if events_config is not None:
        from continual.events import write_events

        write_events(folder, results, events_config)
    write_json(folder / "results.json", results.to_json())


def read_results(path: Path) -> Results | None:
    """The Results a finished method wrote to `path`, or None when there is none. An unreadable
    file (truncated, edited) is moved aside to <path>.unreadable, with a warning, so that the
    method is computed again (from its checkpoints) and its results written afresh."""
    if not path.exists():
        return None
    try:
        return Results.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        print(
            f"warning: cannot read {path} ({type(e).__name__}: {e}); moved to {aside.name}, "
            "computing it again",
            file=sys.stderr,
        )
        return None


def save_comparison(run_dir: Path, all_results: dict[str, Results]) -> None:
    """Writes comparison.json: each method's summary and final row, in run order."""
    write_json(
        run_dir / "comparison.json",
        {
            name: {"summary": r.summary, "final": r.matrix[-1], "metric": r.metric}
            for name, r in all_results.items()
        },
    )


def load_run(run_dir: str | Path) -> dict[str, Results]:
    """Every method's Results in a run directory, in the order comparison.json lists them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    names = _method_order(run_dir)
    if not names:
        raise FileNotFoundError(f"{str(run_dir)!r} holds no results (no */results.json)")
    out = {}
    for name in names:
        path = run_dir / name / "results.json"
        try:
            out[name] = Results.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
    return out


def _method_order(run_dir: Path) -> list[str]:
    """The methods of a run in run order: comparison.json's, else run.json's (when the first is
    unreadable: it is rewritten from the results at the run's end), else every results.json."""
    for name in ("comparison.json", "run.json"):
        try:
            data = json.loads((run_dir / name).read_text())
            names = list(data if name == "comparison.json" else data["methods"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: cannot read {run_dir / name} ({e})", file=sys.stderr)
            continue
        if names and all(isinstance(n, str) for n in names):
            return [n for n in names if (run_dir / n / "results.json").exists()] or names
    return sorted(p.parent.name for p in run_dir.glob("*/results.json"))


def format_table(all_results: dict[str, Results]) -> str:
    """A fixed-width table: method, final metric per task, average, forgetting, BWT, FWT."""
    first = next(iter(all_results.values()))
    tasks = first.tasks
    views: list[str] = []  # the other readings, e.g. task-aware accuracy, in order of appearance
    for r in all_results.values():
        views += [v for v in r.views or {} if v not in views]
    head = ["method", *tasks, "average", "forgetting", "bwt", "fwt"]
    head += [f"{v.replace('_', '-')} avg" for v in views]
    rows = [head]
    for name, r in all_results.items():
        s = r.summary
        cells = [name, *(f"{v:.4g}" for v in r.matrix[-1])]
        cells += [
            "-" if s.get(k) is None else f"{s[k]:.4g}"
            for k in ("average", "forgetting", "bwt", "fwt")
        ]
        averages = [(r.views or {}).get(v, {}).get("summary", {}).get("average") for v in views]
        cells += ["-" if a is None else f"{a:.4g}" for a in averages]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def line(cells):
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join(padded)

    lines = [line(r) for r in rows]
    better = "higher" if first.higher_is_better else "lower"
    return f"final {first.metric} per task ({better} is better)\n" + "\n".join(lines)


def save_tokenizer(run_dir: Path, stream) -> None:
    """Writes <run_dir>/tokenizer.json when the stream is text (for `continual generate`)."""
    tokenizer = getattr(stream, "tokenizer", None)
    if tokenizer is not None and not (run_dir / "tokenizer.json").exists():
        write_atomic(run_dir / "tokenizer.json", tokenizer.to_json() + "\n")
