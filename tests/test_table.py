"""`continual table` and `continual plot DIR...`: every run and sweep as one tidy table, and the
figures drawn from it; the progress bar's description of what is running."""

import csv
import json
import math

import numpy as np
import pytest

from continual import runner
from continual.cli import main
from continual.table import collect, long_rows, summary_rows

from helpers import toy_config

FAST = ["--smoke", "--set", "stream.num_tasks=2", "--quiet", "--no-plots"]
FAST += ["--set", "output.tensorboard=false"]
COLUMNS = ["experiment", "run", "kind", "method", "member", "regularisers.ewc.strength", "seed"]
COLUMNS += ["row", "task", "view", "metric", "value"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = ["run", "split_blobs", "--out", str(out), "--name", "r", "--method", "naive"]
    assert main([*run, "--method", "joint", *FAST]) == 0
    sweep = ["sweep", "split_blobs", "--out", str(out), "--name", "s", "--method", "ewc"]
    grid = ["--grid", "regularisers.ewc.strength=1,4", "--seeds", "2"]
    assert main([*sweep, *grid, *FAST]) == 0
    return out


def results(path):
    return json.loads(path.read_text())


def numbers(r: dict) -> list[tuple]:
    """(view, metric, row, task, value) of every number of a results.json, in the table's order:
    the metric's matrix, from the evaluation before training (None where there was none, as in
    the joint baseline), then each other reading's."""
    out = []
    readings = [("main", r["metric"], r)] + [(k, k, v) for k, v in r.get("views", {}).items()]
    for view, metric, m in readings:
        rows = zip(["initial", *r["rows"]], [m["initial"], *m["matrix"]], strict=True)
        for name, values in rows:
            out += [(view, metric, name, t, v) for t, v in zip(r["tasks"], values, strict=True)]
    return out


def test_the_long_table_holds_every_number_of_every_run_and_member(runs, tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["table", str(runs), "--out", str(out), "--rows", "3"]) == 0
    printed = capsys.readouterr().out
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert "... " in printed and f"{len(rows)} rows from 6 methods and members" in printed
    expected = []
    for method in ("naive", "joint"):
        r = results(runs / "split_blobs" / "r" / method / "results.json")
        expected += [("split_blobs/r", method, "", "", "0", *e) for e in numbers(r)]
    for m in results(runs / "split_blobs" / "s" / "sweep.json")["members"]:
        r = results(runs / "split_blobs" / "s" / m["path"] / "results.json")
        strength = f"{m['values']['regularisers.ewc.strength']:g}"
        member = ("split_blobs/s", "ewc", m["name"], strength, str(m["seed"]))
        expected += [(*member, *e) for e in numbers(r)]
    got = [
        (
            r["run"],
            r["method"],
            r["member"],
            r["regularisers.ewc.strength"] and f"{float(r['regularisers.ewc.strength']):g}",
            r["seed"],
            r["view"],
            r["metric"],
            r["row"],
            r["task"],
            None if r["value"] == "" else float(r["value"]),
        )
        for r in rows
    ]
    assert got == expected
    assert {r["experiment"] for r in rows} == {"split_blobs"}
    assert {r["kind"] for r in rows if r["run"] == "split_blobs/s"} == {"sweep"}


def test_the_summary_is_the_mean_and_sd_over_seeds(runs, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["table", str(runs / "split_blobs"), "--summary", "--out", str(out)]) == 0
    with out.open() as f:
        rows = {
            (r["run"], r["method"], r["regularisers.ewc.strength"]): r for r in csv.DictReader(f)
        }  # (the strengths as written: "1.0", "4.0")
    assert set(rows) == {
        ("r", "naive", ""),
        ("r", "joint", ""),
        ("s", "ewc", "1.0"),
        ("s", "ewc", "4.0"),
    }
    naive = results(runs / "split_blobs" / "r" / "naive" / "results.json")["summary"]
    assert float(rows["r", "naive", ""]["average_mean"]) == naive["average"]
    assert rows["r", "naive", ""]["average_sd"] == "" and rows["r", "naive", ""]["n"] == "1"
    assert rows["r", "joint", ""]["forgetting_mean"] == ""  # undefined for one row
    members = results(runs / "split_blobs" / "s" / "sweep.json")["members"]
    for strength in (1, 4):
        xs = [
            m["summary"]["forgetting"]
            for m in members
            if m["values"]["regularisers.ewc.strength"] == strength
        ]
        row = rows["s", "ewc", f"{strength:.1f}"]
        assert row["n"] == "2" and row["diverged"] == "0"
        assert float(row["forgetting_mean"]) == pytest.approx(np.mean(xs), rel=1e-12)
        assert float(row["forgetting_sd"]) == pytest.approx(np.std(xs, ddof=1), rel=1e-12)
        assert xs[0] != xs[1]  # the seeds differ: the sd is not 0 by construction


def test_a_diverged_member_is_left_out_of_the_summary_and_counted(runs):
    found, keys = collect([runs / "split_blobs" / "s"])
    found[0]["results"].diverged = {"task": "A", "step": 3, "last_finite_loss": 1.0}
    point = found[0]["values"]
    (row,) = [
        r for r in summary_rows(found, keys) if r["regularisers.ewc.strength"] == point[keys[0]]
    ]
    assert (row["n"], row["diverged"], row["average_sd"]) == (1, 1, None)
    kept = [m for m in found if m["values"] == point and m["results"].diverged is None]
    assert row["average_mean"] == kept[0]["results"].summary["average"]
    assert all(math.isfinite(r["value"]) for r in long_rows(found, keys) if r["value"] is not None)


@pytest.mark.slow
def test_plot_compares_every_run_and_sweep(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs), "--out", str(out)]) == 0
    names = {"front.png", "average_vs_regularisers.ewc.strength.png", "matrices.png"}
    assert {p.name for p in out.iterdir()} == names
    assert all((out / n).stat().st_size > 10_000 for n in names)
    assert capsys.readouterr().out.count("\n") == 3
    assert main(["plot", str(runs / "split_blobs" / "r")]) == 0  # one run: redrawn in place
    assert (runs / "split_blobs" / "r" / "plots" / "matrix.png").exists()


def test_the_bar_is_told_each_method_and_task():
    plan = runner.plan(toy_config(steps=20, methods=["naive", "ewc"]))
    told = []
    runner.execute(plan, on_task=lambda method, task: told.append((method, task)))
    assert told == [("naive", "A"), ("naive", "B"), ("ewc", "A"), ("ewc", "B")]


def test_plot_refuses_runs_of_different_metrics(runs, tmp_path, capsys):
    args = ["run", "linear_toy", "--out", str(tmp_path), "--name", "t", "--method", "naive"]
    assert main([*args, "--set", "train.steps=20", "--set", "train.eval_every=10", *FAST[3:]]) == 0
    capsys.readouterr()
    assert main(["plot", str(runs), str(tmp_path), "--out", str(tmp_path / "figures")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different metrics (accuracy, mse)" in err
    assert not (tmp_path / "figures").exists()
