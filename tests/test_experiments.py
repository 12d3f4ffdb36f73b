"""Every experiment config runs in its declared smoke size, through the same runner as the full
one; experiments load from any path and refuse an argument they do not take."""

import numpy as np
import pytest

from continual import runner, streams
from continual.cli import main
from continual.config import (
    ConfigError,
    experiment_config,
    experiment_names,
    load_experiment,
    split_experiment,
)

from helpers import run


def tiny_images():
    """MNIST-shaped uint8 images and labels: 1,200 training and 100 test examples (enough for
    the memories of the full configs: 100 per class)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1300, 28, 28, 1), dtype=np.uint8)
    y = np.arange(1300, dtype=np.int32) % 10
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.slow
@pytest.mark.parametrize("name", experiment_names())
def test_experiment_runs_in_smoke_size(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path))  # generated data goes to a fresh cache
    for source in ("mnist", "fashion_mnist"):  # tests never download: tiny stand-in images
        monkeypatch.setitem(streams.SOURCES, source, tiny_images)
    module = load_experiment(name)
    doc = module.__doc__ or ""
    assert "continual run" in doc and "docs/" in doc  # the command, and where its numbers are
    assert isinstance(module.ARGS, tuple) and isinstance(module.SMOKE["set"], list)
    config = runner.configure(*experiment_config(module, None, smoke=True))
    results = run(config)
    assert set(results) == set(config["run"] or config["methods"])
    for r in results.values():
        assert len(r.matrix[-1]) == len(r.tasks)


def test_every_experiment_refuses_an_argument_it_does_not_take():
    for name in experiment_names():
        module = load_experiment(name)
        with pytest.raises(ConfigError, match="--arg must be one of"):
            experiment_config(module, "typo")


MY_EXPERIMENT = '''"""A researcher's own experiment, outside the package."""

ARGS = (None, "small")
SMOKE = {"arg": "small", "set": ["train.eval_every=5"]}


def get_config(arg=None):
    return {
        "seed": 0,
        "stream": {"name": "linear_toy"},
        "model": {"name": "linear"},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
        "train": {"steps": 10 if arg == "small" else 400, "eval_every": 10},
        "methods": {"naive": {}, "si": {"use": ["si"]}},
        "run": [],
    }
'''


@pytest.mark.slow
def test_an_experiment_file_anywhere_runs_and_resumes(tmp_path, capsys):
    path = tmp_path / "elsewhere" / "my_exp.py"
    path.parent.mkdir()
    path.write_text(MY_EXPERIMENT)
    out = tmp_path / "runs"
    argv = ["run", f"{path}:small", "--out", str(out), "--name", "a", "--quiet", "--no-plots"]
    assert main(argv) == 0
    run_dir = out / "my_exp" / "a"
    config = (run_dir / "config.json").read_text()
    assert '"steps": 10' in config and '"damping": 0.1' in config  # si's registered defaults
    (run_dir / "si" / "results.json").unlink()
    assert main(["resume", str(run_dir), "--quiet", "--no-plots"]) == 0
    assert (run_dir / "si" / "results.json").exists()
    smoke = ["run", str(path), "--smoke", "--out", str(out), "--name", "s", "--quiet"]
    assert main([*smoke, "--no-plots"]) == 0
    assert '"eval_every": 5' in (out / "my_exp" / "s" / "config.json").read_text()
    sweep = ["sweep", f"{path}:small", "--seeds", "2", "--method", "si", "--out", str(out)]
    assert main([*sweep, "--name", "w", "--quiet", "--no-plots"]) == 0
    assert (out / "my_exp" / "w" / "sweep.json").exists()
    capsys.readouterr()
    bad = ["run", f"{path}:huge", "--out", str(out), "--quiet"]
    assert main(bad) == 2
    assert capsys.readouterr().err.strip().endswith("got 'huge'")


def test_split_experiment():
    assert split_experiment("split_mnist:task") == ("split_mnist", "task")
    assert split_experiment("dir/x.py", "a") == ("dir/x.py", "a")
    with pytest.raises(ConfigError, match="given twice"):
        split_experiment("x.py:a", "b")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_experiment", "unknown experiment"),
        ("missing/file.py", "does not exist"),
    ],
)
def test_bad_experiments_are_one_line(spec, message, tmp_path, capsys):
    assert main(["run", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_a_broken_experiment_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(arg=None:\n")
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "SyntaxError" in err and "\n" not in err and not (tmp_path / "runs").exists()


def test_a_registered_method_is_reachable_from_any_experiment():
    module = load_experiment("linear_toy")
    base, _ = experiment_config(module, None)
    assert "rwalk" not in base.get("regularisers", {})
    config = runner.configure(
        base,
        [
            "regularisers.rwalk.strength=3",
            "methods.l2.use=rwalk",
            "train.steps=8",
            "train.eval_every=4",
        ],
    )
    assert config["regularisers"]["rwalk"] == {"strength": 3.0, "decay": 0.9, "damping": 1e-3}
    p = runner.plan(config, ["l2"])
    assert p.methods[0].regulariser.name == "rwalk"
    with pytest.raises(ConfigError, match="unknown config key"):
        runner.configure(base, ["regularisers.rwalk.no_such_key=1"])
