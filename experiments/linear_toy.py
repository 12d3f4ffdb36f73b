"""The article's linear toy: f(x) = ax + b learns (2,6), (3,7), then (4,13), and forgets.

    continual run linear_toy          # six methods side by side, plots included

Time: about 5 s on 2 CPU cores with a cold compilation cache (measured: docs/speed.md; this
docstring said about 4 s before).
Results: docs/demos.md#the-linear-toy

Two tasks, full-batch gradient descent. `article` fine-tunes b alone on the new point, as the
article does; `naive` fine-tunes both parameters; L2, EWC and replay trade old against new;
`joint` trains once on all three points. Every printed a, b and prediction is computed.
"""

from continual.data import toy

ARGS = (None,)  # what --arg accepts: nothing
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests


def get_config(arg=None):
    """The article's two tasks, full-batch gradient descent, six methods side by side."""
    return {
        "seed": 0,
        "stream": {"name": "linear_toy"},
        "model": {"name": "linear"},
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.05,
            "momentum": 0.9,
            "reset_per_task": True,
        },
        "train": {"steps": 1000, "batch_size": 0, "eval_every": 25, "record_params": True},
        "regularisers": {
            "l2": {"strength": 1.0},
            "ewc": {"strength": 1.0, "estimator": "exact", "mode": "separate", "gamma": 1.0},
            "replay": {"capacity": 2, "weight": 1.0, "batch_size": 0},
        },
        "methods": {
            "article": {"freeze": ["kernel"]},  # fine-tune b only after task A
            "naive": {},
            "l2": {"use": ["l2"]},
            "ewc": {"use": ["ewc"]},
            "replay": {"use": ["replay"]},
            "joint": {"joint": True},
        },
        "run": [],  # empty: every method above, in order
        "checkpoint": {"enabled": False},  # trains in milliseconds: nothing worth resuming
    }


def _ab(params):
    layer = params["params"]["linear"]
    return layer["kernel"][0][0], layer["bias"][0]


def report(results, stream):
    """a, b and the predictions on the three points after each task, per method."""
    xs = [x[0] for x in stream.probes]
    lines = [
        "",
        "f(x) = a x + b after each task; predictions at x = " + ", ".join(f"{x:g}" for x in xs),
    ]
    for name, r in results.items():
        for row, params, preds in zip(r.rows, r.params or [], r.probes or [], strict=False):
            a, b = _ab(params)
            shown = ", ".join(f"{p[0]:.4f}" for p in preds)
            lines.append(f"  {name:<8} after {row:<5}  a = {a:8.4f}  b = {b:8.4f}  f = [{shown}]")
    art = results.get("article")
    if art is not None and art.params and len(art.params) == 2:
        (a0, b0), (_, b1) = _ab(art.params[0]), _ab(art.params[1])
        old = [p[0] for p in art.probes[1][: len(toy.TASK_A)]]
        lines.append(
            f"article: after A a = {a0:.4f}, b = {b0:.4f}; fine-tuning b on (4, 13) "
            f"gives b = {b1:.4f}; the old points now predict "
            f"{old[0]:.4f} and {old[1]:.4f} instead of 6 and 7"
        )
    return lines


def plot(results, stream, plots_dir):
    """The fitted line of every method after each task, with the three points."""
    import numpy as np

    from continual.plots import _grid, _pyplot, save

    plt = _pyplot()
    rows, cols = _grid(len(results))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    grid = np.linspace(0, 5, 50)
    for ax, (name, r) in zip(axes.flat, results.items(), strict=False):
        for _t, task in enumerate(stream.tasks):
            ax.scatter(
                task.train["x"][:, 0], task.train["y"][:, 0], zorder=3, label=f"task {task.name}"
            )
        for row, params, style in zip(r.rows, r.params or [], ("--", "-"), strict=False):
            a, b = _ab(params)
            ax.plot(
                grid, a * grid + b, style, color="k", lw=1, label=f"after {row}: {a:.2f}x{b:+.2f}"
            )
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.93, wspace=0.3, hspace=0.45)
    return [save(fig, plots_dir / "lines.png")]
