"""TensorBoard event files: read back with TensorBoard's own reader, they hold results.json."""

import json

import numpy as np
import pytest

from continual.cli import main
from continual.events import CELL, PREFIX, heatmap, write_events
from continual.types import Results

FAST = ["--set", "train.steps=100", "--set", "train.eval_every=25", "--quiet", "--no-plots"]


def read(folder):
    """(scalars {tag: [(step, value)]}, images {tag: [(step, h, w)]}, texts {tag: str})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    (path,) = folder.glob(PREFIX + "*")  # one event file per folder
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.height, e.width) for e in acc.Images(t)] for t in tags["images"]}
    texts = {
        t.removesuffix("/text_summary"): tensor_util.make_ndarray(acc.Tensors(t)[0].tensor_proto)
        .item()
        .decode()
        for t in tags["tensors"]
    }
    return scalars, images, texts


def pairs(steps, values):
    """(step, value as float32) of a series' known values, as TensorBoard stores them."""
    return [(s, np.float32(v)) for s, v in zip(steps, values, strict=True) if v is not None]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["run", "linear_toy", "--out", str(out), "--method", "naive", "--method", "ewc"]
    assert main([*args, "--name", "r", *FAST]) == 0
    return out / "linear_toy" / "r"


@pytest.mark.parametrize("method", ["naive", "ewc"])
def test_the_events_hold_results_json(run_dir, method):
    r = json.loads((run_dir / method / "results.json").read_text())
    scalars, images, texts = read(run_dir / method)
    steps, losses = r["curves"]["step"], r["curves"]["losses"]
    parts = {"naive": {"total", "loss"}, "ewc": {"total", "loss", "ewc/penalty"}}[method]
    assert set(losses) == parts
    for part in parts:
        assert scalars[f"loss/{part}"] == pairs(steps, losses[part])
    values = np.asarray(r["curves"]["values"], np.float64)
    for j, task in enumerate(r["tasks"]):
        assert scalars[f"mse/{task}"] == pairs(steps, values[:, j])
    for name, value in r["summary"].items():
        assert scalars.get(f"summary/{name}", []) == pairs(steps[-1:], [value])
    rows, cols = np.shape(r["matrix"])
    assert images == {"matrix": [(steps[-1], rows * CELL, cols * CELL)]}
    assert json.loads(texts["config"]) == json.loads((run_dir / "config.json").read_text())


def test_the_losses_are_the_objective_and_the_penalties(run_dir):
    naive = json.loads((run_dir / "naive" / "results.json").read_text())["curves"]
    assert naive["losses"]["total"] == naive["losses"]["loss"]  # no penalty
    ewc = json.loads((run_dir / "ewc" / "results.json").read_text())["curves"]
    total, loss, penalty = (
        np.asarray(ewc["losses"][k][1:], float) for k in ("total", "loss", "ewc/penalty")
    )
    np.testing.assert_allclose(total, loss + penalty, rtol=1e-6)
    first_task = np.asarray(ewc["training_task"][1:]) == 0
    assert (penalty[first_task] == 0).all() and (penalty[~first_task] > 0).all()
    assert ewc["losses"]["total"][0] is None  # the evaluation before training had no step


def test_output_tensorboard_false_writes_none(tmp_path):
    args = ["run", "linear_toy", "--out", str(tmp_path), "--method", "naive", "--name", "r"]
    assert main([*args, *FAST, "--set", "output.tensorboard=false"]) == 0
    assert (tmp_path / "linear_toy" / "r" / "naive" / "results.json").exists()
    assert not list(tmp_path.rglob(PREFIX + "*"))


@pytest.mark.slow
def test_every_sweep_member_has_its_events_and_config(tmp_path):
    args = ["sweep", "linear_toy", "--method", "ewc", "--grid", "regularisers.ewc.strength=1,4"]
    assert main([*args, "--seeds", "2", "--out", str(tmp_path), "--name", "s", *FAST]) == 0
    members = sorted((tmp_path / "linear_toy" / "s" / "members" / "ewc").iterdir())
    assert len(members) == 4
    for folder in members:
        r = json.loads((folder / "results.json").read_text())
        scalars, _, texts = read(folder)
        config = json.loads(texts["config"])
        assert folder.name == (
            f"regularisers.ewc.strength={config['regularisers']['ewc']['strength']:g},"
            f"seed={config['seed']}"
        )
        assert scalars["summary/average"] == pairs(
            [r["curves"]["step"][-1]], [r["summary"]["average"]]
        )


def test_writing_again_replaces_the_file(tmp_path):
    r = Results(
        method="m",
        tasks=["a", "b"],
        metric="accuracy",
        higher_is_better=True,
        matrix=[[0.5, float("nan")], [0.25, 1.0]],
        initial=[0.1, 0.1],
        summary={"average": 0.625, "forgetting": 0.25, "bwt": -0.25, "fwt": None},
        curves={"step": [0, 10], "training_task": [0, 0], "values": [[0.1, 0.1], [0.5, None]]},
        timing={},
    )
    write_events(tmp_path, r, {"x": 1})
    write_events(tmp_path, r, {"x": 2})
    scalars, images, texts = read(tmp_path)  # (one file, or `read` fails)
    assert json.loads(texts["config"]) == {"x": 2}
    assert scalars["accuracy/b"] == [(0, np.float32(0.1))]  # the missing value left out
    assert "summary/fwt" not in scalars and images == {"matrix": [(10, 2 * CELL, 2 * CELL)]}
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(PREFIX)]


def test_heatmap_colours_better_brighter_and_missing_grey():
    image = heatmap([[0.0, 1.0], [np.nan, 0.5]]).astype(int)
    cell = image[::CELL, ::CELL]  # one pixel per entry
    assert image.shape == (2 * CELL, 2 * CELL, 3)
    assert cell[0, 1].sum() > cell[1, 1].sum() > cell[0, 0].sum()  # viridis brightens
    assert (cell[1, 0] == 128).all()
    flipped = heatmap([[0.0, 1.0]], higher_is_better=False).astype(int)[::CELL, ::CELL]
    assert flipped[0, 0].sum() > flipped[0, 1].sum()  # lower is better: 0 is the brightest
