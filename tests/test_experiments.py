"""Every experiment config runs in smoke size, through the same runner as the full one."""

import copy

import pytest

from continual.config import experiment_names, load_experiment

from helpers import run


@pytest.mark.parametrize("name", experiment_names())
def test_experiment_runs_in_smoke_size(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path))  # generated data goes to a fresh cache
    module = load_experiment(name)
    assert module.__doc__ and "continual run" in module.__doc__  # the command is documented
    config = copy.deepcopy(module.get_config(None))
    config["train"].update(steps=4, eval_every=2)
    results = run(config)
    assert set(results) == set(config["run"] or config["methods"])
    for r in results.values():
        assert len(r.matrix[-1]) == len(r.tasks)
