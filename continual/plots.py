"""Figures of a run: each method's metric matrix, and old- vs new-task curves over training.

Missing values (NaN: tasks not evaluated, e.g. not yet seen with `train.evaluate = "seen"`) are
blank cells in the matrix and gaps in the curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from continual.types import Results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def save(fig, path: Path) -> Path:
    """Saves a figure atomically (temporary file, then rename) and closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."))
    tmp.replace(path)
    _pyplot().close(fig)
    return path


def plot_matrices(all_results: dict[str, Results], path: Path) -> Path:
    """Heatmap of matrix[i][j] (metric on task j after training row i) for every method."""
    plt = _pyplot()
    rows, cols = _grid(len(all_results))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, all_results.items(), strict=False):
        m = np.asarray(r.matrix, np.float64)  # None or NaN: missing, drawn as a blank cell
        cmap = "viridis" if r.higher_is_better else "viridis_r"
        ax.imshow(np.ma.masked_invalid(m), cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(m.shape[1]), r.tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(m.shape[0]), r.rows or r.tasks[: m.shape[0]], fontsize=7)
        ax.set_xlabel(f"evaluated on ({r.metric})", fontsize=8)
        ax.set_ylabel("after training", fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(all_results) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.93, wspace=0.3, hspace=0.45)
    return save(fig, path)


def plot_curves(all_results: dict[str, Results], path: Path) -> Path:
    """Metric on every task over training steps, one panel per method, task boundaries dashed;
    a task's curve starts where it was first evaluated (gaps where it was not)."""
    plt = _pyplot()
    rows, cols = _grid(len(all_results))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, all_results.items(), strict=False):
        steps = np.asarray(r.curves["step"])
        values = np.asarray(r.curves["values"], np.float64)
        if not r.higher_is_better:  # errors span decades: log scale, exact zeros floored
            values = np.maximum(values, 1e-12)
        training = np.asarray(r.curves["training_task"])
        missing = np.isnan(values).any()  # markers, so that a lone evaluated point shows
        for j, task in enumerate(r.tasks):
            ax.plot(steps, values[:, j], label=task, lw=1.5, marker="." if missing else None)
        for b in steps[:-1][np.diff(training) != 0]:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
        known = values[~np.isnan(values)]
        if not r.higher_is_better and known.size and known.max() > 100 * known.min():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel(r.metric, fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(all_results) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.93, wspace=0.3, hspace=0.45)
    return save(fig, path)


def plot_run(all_results: dict[str, Results], plots_dir: Path) -> list[Path]:
    """The standard figures of a run."""
    return [
        plot_matrices(all_results, plots_dir / "matrix.png"),
        plot_curves(all_results, plots_dir / "curves.png"),
    ]


def _series(table: list[dict]):
    """Sweep table rows grouped into series: one per method, outer values and every grid value
    but the first grid key's (which runs along the series)."""
    series: dict[str, list[dict]] = {}
    for row in table:
        keys = list(row["values"])
        fixed = {**row["outer"], **{k: row["values"][k] for k in keys[1:]}}
        label = " ".join(
            [
                row["method"],
                *(
                    f"{k.split('.')[-1]}={v:g}"
                    if isinstance(v, float)
                    else f"{k.split('.')[-1]}={v}"
                    for k, v in fixed.items()
                ),
            ]
        )
        if row["average"] is not None:  # every seed of this point diverged: nothing to draw
            series.setdefault(label, []).append(row)
    return series


def _diverged_note(fig, table: list[dict]) -> None:
    """Says, under the axes, how many members diverged and were left out."""
    n = sum(row["diverged"] for row in table)
    if n:
        points = sum(row["average"] is None for row in table)
        note = f"{n} diverged member{'s' if n > 1 else ''} left out"
        note += f" ({points} point{'s' if points > 1 else ''} with none left)" if points else ""
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="0.3")


def plot_front(table: list[dict], metric: str, path: Path) -> Path:
    """The stability-plasticity front: old-task vs new-task final metric, one point per grid
    value (mean over seeds, SEM error bars), labelled with the swept value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    series = _series(table)
    for label, rows in series.items():
        new = np.array([r["last"] for r in rows])
        old = np.array([r["old"] for r in rows])
        ax.errorbar(
            new[:, 0],
            old[:, 0],
            xerr=new[:, 1],
            yerr=old[:, 1],
            marker="o",
            ms=4,
            capsize=2,
            lw=1,
            label=label,
        )
        for r, x, y in zip(rows, new[:, 0], old[:, 0], strict=True):
            if r["values"]:
                v = next(iter(r["values"].values()))
                ax.annotate(
                    f"{v:.3g}" if isinstance(v, float) else str(v),
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set_xlabel(f"newest task: final {metric}")
    ax.set_ylabel(f"older tasks: final {metric} (mean)")
    swept = next(iter(table[0]["values"]), None) if table else None
    ax.set_title(
        "stability-plasticity front" + (f" (labels: {swept})" if swept else ""), fontsize=10
    )
    if series:
        ax.legend(fontsize=7)
    _diverged_note(fig, table)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
    return save(fig, path)


def plot_vs_value(table: list[dict], metric: str, path: Path) -> Path | None:
    """Average final metric against the first grid key's value (log axis when positive)."""
    if not table or not table[0]["values"]:
        return None
    key = next(iter(table[0]["values"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    numeric = True
    series = _series(table)
    for label, rows in series.items():
        xs = [r["values"][key] for r in rows]
        numeric &= all(isinstance(x, (int, float)) and x > 0 for x in xs)
        avg = np.array([r["average"] for r in rows])
        pos = xs if numeric else list(range(len(xs)))
        ax.errorbar(pos, avg[:, 0], yerr=avg[:, 1], marker="o", ms=4, capsize=2, lw=1, label=label)
        if not numeric:
            ax.set_xticks(pos, [str(x) for x in xs])
    if numeric:
        values = [r["values"][key] for r in table]
        if max(values) > 10 * min(values):
            ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"average final {metric}")
    if series:
        ax.legend(fontsize=7)
    _diverged_note(fig, table)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.95)
    return save(fig, path)
