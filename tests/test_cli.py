"""The `continual` command end to end, and its one-line errors for bad input."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from continual.cli import main

FAST = ["--set", "train.steps=200", "--set", "train.eval_every=50", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "linear_toy", "--out", str(out), *FAST]) == 0
    (path,) = (out / "linear_toy").iterdir()
    return path


@pytest.mark.slow
def test_run_writes_the_documented_layout(run_dir):
    methods = ["article", "naive", "l2", "ewc", "replay", "joint"]
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 200
    assert list(json.loads((run_dir / "comparison.json").read_text())) == methods
    for m in methods:
        r = json.loads((run_dir / m / "results.json").read_text())
        for key in ("tasks", "metric", "matrix", "summary", "curves", "timing"):
            assert key in r, (m, key)
        assert r["tasks"] == ["A", "B"] and r["metric"] == "mse"
        assert set(r["summary"]) == {"average", "forgetting", "bwt", "fwt"}
        lines = (run_dir / m / "curves.csv").read_text().splitlines()
        assert lines[0] == "step,training_task,A,B" and len(lines) == len(r["curves"]["step"]) + 1
    for name in ("matrix.png", "curves.png", "lines.png"):
        assert (run_dir / "plots" / name).stat().st_size > 10_000
    assert not list(run_dir.rglob("*.tmp"))


def test_run_prints_the_table_and_the_article_line(tmp_path, capsys):
    argv = ["run", "linear_toy", "--out", str(tmp_path), "--method", "article", "--no-plots"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final mse per task (lower is better)" in out
    assert "gives b = 9.0000" in out and "11.0000 and 12.0000" in out
    (path,) = (tmp_path / "linear_toy").iterdir()
    assert [p.name for p in path.iterdir() if p.is_dir()] == ["article"]


@pytest.mark.slow
def test_plot_redraws_a_run(run_dir, capsys):
    for png in (run_dir / "plots").iterdir():
        png.unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert {p.name for p in (run_dir / "plots").iterdir()} == {
        "matrix.png",
        "curves.png",
        "lines.png",
    }


def test_list_names_experiments_and_regularisers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "linear_toy" in out and "ewc" in out and "replay" in out
    lines = out.splitlines()
    methods = [i for i, line in enumerate(lines) if line.lstrip().startswith("methods: ")]
    (column,) = {lines[i].index("methods: ") for i in methods}  # one column for every experiment
    for name_line in (lines[i - 1] for i in methods):  # its description starts there too
        assert name_line[column - 2 : column] == "  " and name_line[column] != " ", name_line


BAD = {
    "unknown experiment": (["run", "nope"], "unknown experiment 'nope'"),
    "unknown method": (["run", "linear_toy", "--method", "nope"], "unknown method 'nope'"),
    "unknown regulariser": (
        ["run", "linear_toy", "--set", "methods.ewc.use=nope"],
        "unknown regulariser 'nope'",
    ),
    "unknown key": (
        ["run", "linear_toy", "--set", "train.nope=1"],
        "unknown config key 'train.nope'",
    ),
    "unknown section": (["run", "linear_toy", "--set", "nope.x=1"], "unknown config key"),
    "wrong type": (
        ["run", "linear_toy", "--set", "train.steps=many"],
        "train.steps must be an integer",
    ),
    "float for int": (
        ["run", "linear_toy", "--set", "train.steps=2.5"],
        "train.steps must be an integer",
    ),
    "negative strength": (
        ["run", "linear_toy", "--set", "regularisers.ewc.strength=-1"],
        "strength must be >= 0",
    ),
    "negative l2": (
        ["run", "linear_toy", "--set", "regularisers.l2.strength=-0.5"],
        "strength must be >= 0",
    ),
    "zero steps": (["run", "linear_toy", "--set", "train.steps=0"], "train.steps must be >= 1"),
    "bad estimator": (
        ["run", "linear_toy", "--set", "regularisers.ewc.estimator=guess"],
        "unknown Fisher estimator 'guess'",
    ),
    "bad optimizer": (
        ["run", "linear_toy", "--set", "optimizer.name=magic"],
        "unknown optimizer 'magic'",
    ),
    "bad model": (["run", "linear_toy", "--set", "model.name=resnet"], "unknown model 'resnet'"),
    "not key=value": (["run", "linear_toy", "--set", "train.steps"], "not of the form key=value"),
    "missing run dir": (["plot", "/nonexistent/run"], "does not exist"),
    "resume missing dir": (["resume", "/nonexistent/run"], "is not a run directory"),
    "resume without runs": (["run", "linear_toy", "--resume"], "--resume: no run"),
    "zero eval_every": (
        ["run", "linear_toy", "--set", "train.eval_every=0"],
        "train.eval_every must be >= 1",
    ),
    "negative batch": (
        ["run", "linear_toy", "--set", "train.batch_size=-4"],
        "train.batch_size must be >= 0",
    ),
    "negative seed": (["run", "linear_toy", "--set", "seed=-1"], "seed must be >= 0"),
    "negative gamma": (
        ["run", "linear_toy", "--set", "regularisers.ewc.gamma=-1"],
        "gamma must be >= 0",
    ),
    "cnn kernel larger than the signal": (
        ["run", "mnist1d_baselines", "--arg", "cnn", "--set", "model.kernels=100,3,3"],
        "does not fit its input of size 40",
    ),
    "unknown mnist1d_baselines argument": (
        ["run", "mnist1d_baselines", "--arg", "resnet"],
        "--arg must be one of no argument, 'mlp', 'cnn'; got 'resnet'",
    ),
    "negative replay weight": (
        ["run", "linear_toy", "--set", "regularisers.replay.weight=-1"],
        "weight must be >= 0",
    ),
    "zero learning rate": (
        ["run", "linear_toy", "--set", "optimizer.learning_rate=0"],
        "learning_rate must be > 0",
    ),
    "bad mode": (
        ["run", "linear_toy", "--set", "regularisers.ewc.mode=sometimes"],
        "unknown EWC mode",
    ),
    "buffer larger than data": (
        ["run", "linear_toy", "--set", "regularisers.replay.capacity=99"],
        "larger than the stream's 3 training examples",
    ),
    "zero keep": (
        ["run", "linear_toy", "--set", "checkpoint.keep=0"],
        "checkpoint.keep must be >= 1",
    ),
    "bad bool": (
        ["run", "linear_toy", "--set", "train.record_params=maybe"],
        "must be true or false",
    ),
    "bad scenario": (
        ["run", "split_blobs", "--set", "stream.scenario=nope"],
        "unknown scenario 'nope'",
    ),
    "uneven split": (
        ["run", "split_blobs", "--set", "stream.num_tasks=3"],
        "cannot split 10 classes into 3",
    ),
    "zero width": (
        ["run", "split_blobs", "--set", "model.widths=0"],
        "widths must be a list of positive integers",
    ),
    "unknown initializer": (
        ["run", "split_blobs", "--set", "model.initializer=he"],
        "model mlp: unknown initializer 'he'",
    ),
    "resume and overwrite": (
        ["run", "linear_toy", "--resume", "--overwrite"],
        "not allowed with argument",
    ),
    "bad widths": (
        ["run", "split_blobs", "--set", "model.widths=a,b"],
        "model.widths must be an integer",
    ),
    "unknown command": (["fly"], "invalid choice"),
    "exact compile not a bool": (
        ["run", "linear_toy", "--set", "train.exact_compile=maybe"],
        "must be true or false",
    ),
    "null where a number goes": (
        ["run", "linear_toy", "--set", "train.steps=null"],
        "train.steps must be",
    ),
    "infinite strength": (
        ["run", "linear_toy", "--set", "regularisers.ewc.strength=inf"],
        "regularisers.ewc.strength must be a finite number, got 'inf'",
    ),
    "strength that overflows": (
        ["run", "linear_toy", "--set", "regularisers.l2.strength=1e400"],
        "must be a finite number, got '1e400'",
    ),
    "infinite learning rate": (
        ["run", "linear_toy", "--set", "optimizer.learning_rate=-inf"],
        "optimizer.learning_rate must be a finite number",
    ),
    "infinite spread": (
        ["run", "split_blobs", "--set", "stream.spread=inf"],
        "stream.spread must be a finite number",
    ),
    "seed past 32 bits": (
        ["run", "linear_toy", "--set", "seed=99999999999999999999999"],
        "seed must be <= 4294967295",
    ),
    "sweep seeds past 32 bits": (
        ["sweep", "linear_toy", "--set", "seed=4294967295", "--seeds", "2"],
        "the last member's seed) must be <= 4294967295",
    ),
    "name with a parent": (
        ["run", "linear_toy", "--name", "../../escape"],
        "--name must be one directory name",
    ),
    "absolute name": (["run", "linear_toy", "--name", "/tmp/x"], "--name must be one"),
    "name dot": (["run", "linear_toy", "--name", "."], "--name must be one directory name"),
    "name dot dot": (["sweep", "linear_toy", "--name", ".."], "--name must be one"),
    "empty list item": (
        ["run", "split_blobs", "--set", "model.widths=64,,64"],
        "model.widths has an empty item in '64,,64'",
    ),
    "empty grid item": (
        ["sweep", "linear_toy", "--grid", "regularisers.ewc.strength=1,,2"],
        "regularisers.ewc.strength has an empty item",
    ),
    "infinite grid range": (
        ["sweep", "linear_toy", "--grid", "regularisers.ewc.strength=1:1e400:3"],
        "needs finite LOW, HIGH > 0",
    ),
    "allow a change without resume": (
        ["run", "linear_toy", "--allow-config-change"],
        "--allow-config-change goes with --resume",
    ),
    "sweep allows a change without resume": (
        ["sweep", "linear_toy", "--allow-config-change"],
        "--allow-config-change goes with --resume",
    ),
    "batch larger than a task": (
        ["run", "linear_toy", "--set", "train.batch_size=1000000"],
        "train.batch_size (1000000) is larger than task",
    ),
    "a model larger than memory": (
        ["run", "split_blobs", "--set", "model.widths=99999999999"],
        "method 'naive' needs at least 46,193.6 GiB for its state and gradients, more than",
    ),
    "a sweep of too many members": (
        ["sweep", "linear_toy", "--grid", "regularisers.ewc.strength=1:10:100000000"],
        "the sweep has 600000000 members",
    ),
    "a sweep larger than memory": (
        [
            "sweep",
            "split_blobs",
            "--method",
            "ewc",
            "--seeds",
            "9000",
            "--set",
            "model.widths=4096,4096",
        ],
        "9000 members of 'ewc' needs at least",
    ),
    "infinite temperature": (
        ["generate", "--model", "smollm2-135m", "--prompt", "hi", "--temperature", "inf"],
        "--temperature must be a finite number >= 0",
    ),
    "generate seed past 32 bits": (
        ["generate", "--model", "smollm2-135m", "--prompt", "hi", "--seed", str(2**64)],
        "--seed must be <= 4294967295",
    ),
    "tensorboard not a flag": (
        ["run", "linear_toy", "--set", "output.tensorboard=maybe"],
        "output.tensorboard must be true or false",
    ),
    "an output key that does not exist": (
        ["run", "linear_toy", "--set", "output.wandb=true"],
        "unknown config key 'output.wandb'",
    ),
    "table of a missing directory": (["table", "/nonexistent/runs"], "is not a directory"),
    "table of a directory without runs": (
        ["table", str(Path(__file__).parent / "fixtures")],
        "holds no run or sweep (no run.json below it)",
    ),
    "table to a file that is not csv": (
        ["table", ".", "--out", "table.txt"],
        "--out must name a .csv file, got 'table.txt'",
    ),
    "table with negative rows": (["table", ".", "--rows", "-1"], "--rows must be 0 or more"),
    "plot of missing directories": (
        ["plot", "/nonexistent/a", "/nonexistent/b"],
        "'/nonexistent/a' is not a directory",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    argv, message = BAD[case]
    if argv[0] in ("run", "sweep"):
        argv = [*argv, "--out", str(tmp_path / "runs")]
        if "--resume" in argv and "--overwrite" not in argv:
            (tmp_path / "runs").mkdir()  # an empty output folder: nothing to resume
    if argv[0] == "table" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "runs" / "table.csv")]
    if argv[0] == "plot":
        argv = [*argv, "--out", str(tmp_path / "runs")]
    exits = case in ("unknown command", "resume and overwrite")  # argparse's own checks
    with pytest.raises(SystemExit) if exits else contextlib.nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("continual: error: "), err
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_orbax_advice_is_quiet_and_its_errors_are_not(monkeypatch, caplog):
    from absl import logging as absl_logging

    import continual.cli as cli

    def chatty():
        absl_logging.warning("Waiting for previous save to complete took 6 seconds.")
        absl_logging.error("a real error")
        return 0

    before = absl_logging.get_verbosity()
    monkeypatch.setattr(cli, "_list", chatty)
    assert main(["list"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["a real error"]
    assert absl_logging.get_verbosity() == before


def test_an_infinite_value_in_an_experiment_file_is_refused(tmp_path, capsys):
    experiment = tmp_path / "inf_toy.py"
    experiment.write_text(
        "from continual.experiments.linear_toy import get_config as toy\n\n\n"
        "def get_config(arg=None):\n"
        "    config = toy(arg)\n"
        "    config['regularisers']['l2']['strength'] = float('inf')\n"
        "    return config\n"
    )
    assert main(["run", str(experiment), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == "continual: error: regularisers.l2.strength must be a finite number, got inf\n"
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    argv = ["run", "linear_toy", "--out", str(tmp_path), "--name", "x", "--method", "article"]
    assert main([*argv, "--no-plots", "--quiet"]) == 0
    run_dir = tmp_path / "linear_toy" / "x"
    holder = subprocess.Popen(  # another continual process, as far as the lock can tell
        [sys.executable, "-c", HOLD, str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        capsys.readouterr()
        for again in (["resume", str(run_dir)], [*argv, "--resume"], [*argv, "--overwrite"]):
            assert main(again) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is in use by another continual process" in err
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (run_dir / "article" / "results.json").exists()  # --overwrite removed nothing
    assert main(["resume", str(run_dir), "--no-plots"]) == 0


HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
HOLD += "print('held', flush=True); time.sleep(120)"


@pytest.mark.slow
def test_corrupt_run_files_are_one_line_errors(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "naive" / "results.json").write_text('{"method": "naive", "tasks": [')
    assert main(["plot", str(broken)]) == 2
    assert "cannot read" in capsys.readouterr().err
    (broken / "run.json").write_text("{not json")
    assert main(["resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the run" in err


def test_read_only_output_directory(tmp_path, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root ignores permissions: a file where a folder must go
        blocker.write_text("")
        out = blocker
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    assert main(["run", "linear_toy", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create run directory" in err


@pytest.mark.slow
def test_console_script_in_a_subprocess(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "continual.cli",
        "run",
        "linear_toy",
        "--out",
        str(tmp_path),
        "--method",
        "article",
        "--no-plots",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "b = 9.0000" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "continual.cli", "run", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("continual: error: unknown")
