"""TensorBoard event files of a method's results, written by tensorboardX (no TensorFlow).

Each goes into the folder of its results.json (a run's `<run>/<method>/`, a sweep member's
`members/<method>/<member>/`), so `tensorboard --logdir runs/` shows every run's methods and every
sweep's members side by side, named by their paths. One file holds, at the run's training steps:

  loss/total, loss/loss, loss/<regulariser>/penalty   each chunk's mean over its steps: what the
                                                      step minimised, the objective's part, each
                                                      regulariser's penalty (curves' `losses`)
  <metric>/<task>                   every trained task's metric after every chunk (curves' values)
  eval_only/<task>                  a stream's evaluation-only tasks the same way
  summary/<name>                    average, forgetting, bwt, fwt at the last step
  matrix                            the final matrix as a heatmap image (one 24-pixel cell per
                                    entry, viridis; brighter is better; a missing value is grey)
  config                            the config the method ran with, as text

A run's numbers are results.json's (float32 in the file); the file, `events.out.tfevents.continual`,
is written from them when the method finishes, to a temporary folder and moved into place,
replacing an older one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from continual.types import Results

PREFIX = "events.out.tfevents."
NAME = PREFIX + "continual"  # one name, not the writer's time and host: a run's files are its own
CELL = 24  # pixels per matrix entry


def write_events(folder: Path, results: Results, config: dict) -> Path:
    """Writes `results` (and `config`) as one TensorBoard event file in `folder`, replacing any
    event file already there; returns its path."""
    from tensorboardX import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".events.") as tmp:
        writer = SummaryWriter(logdir=tmp, flush_secs=3600)
        try:
            _write(writer, results, config)
        finally:
            writer.close()
        (written,) = Path(tmp).glob(PREFIX + "*")
        path = folder / NAME
        os.replace(written, path)
        for old in folder.glob(PREFIX + "*"):
            if old != path:
                old.unlink()
    return path


def _write(writer, r: Results, config: dict) -> None:
    steps = r.curves["step"]
    for part, values in (r.curves.get("losses") or {}).items():
        _series(writer, f"loss/{part}", steps, values)
    values = np.asarray(r.curves["values"], np.float64)
    for j, task in enumerate(r.tasks):
        _series(writer, f"{r.metric}/{task}", steps, values[:, j])
    if r.eval_only is not None and len(r.eval_only.get("values", [])) == len(steps):
        held = np.asarray(r.eval_only["values"], np.float64)
        for j, task in enumerate(r.eval_only["tasks"]):
            _series(writer, f"eval_only/{task}", steps, held[:, j])
    last = steps[-1] if steps else 0
    for name, value in r.summary.items():
        _series(writer, f"summary/{name}", [last], [value])
    writer.add_image("matrix", heatmap(r.matrix, r.higher_is_better), last, dataformats="HWC")
    text = json.dumps(config, indent=1, ensure_ascii=False)
    writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # markdown: code


def _series(writer, tag: str, steps, values) -> None:
    """Adds the finite values of a series (None and NaN are missing: not written)."""
    for step, value in zip(steps, values, strict=True):
        if value is not None and math.isfinite(value):
            writer.add_scalar(tag, float(value), int(step))


def heatmap(matrix, higher_is_better: bool = True) -> np.ndarray:
    """(rows*CELL, columns*CELL, 3) uint8: each entry a square coloured by viridis over the
    matrix's own range, brighter better; a missing (None / NaN) entry mid grey."""
    from matplotlib import colormaps

    m = np.asarray(matrix, np.float64)
    finite = np.isfinite(m)
    lo, hi = (m[finite].min(), m[finite].max()) if finite.any() else (0.0, 1.0)
    scaled = (m - lo) / (hi - lo) if hi > lo else np.full_like(m, 0.5)
    if not higher_is_better:
        scaled = 1 - scaled
    rgb = colormaps["viridis"](np.where(finite, scaled, 0.0))[..., :3]
    rgb[~finite] = 0.5
    image = np.repeat(np.repeat(rgb, CELL, axis=0), CELL, axis=1)
    return (image * 255).round().astype(np.uint8)
