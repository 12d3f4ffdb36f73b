"""The pretrained_knowledge experiment on a random tiny Llama: its methods, report, plot and
`continual generate` on its runs; the probe restriction to what the base model knows."""

import json

import numpy as np
import pytest

from continual import runner
from continual.cli import main
from continual.config import ConfigError, experiment_config, load_experiment
from continual.streams.pretrained import pretrained_facts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTINUAL_DATA", str(data))
        argv = ["run", "pretrained_knowledge", "--smoke", "--out", str(out), "--name", "t"]
        assert main([*argv, "--quiet"]) == 0
    return out / "pretrained_knowledge" / "t"


@pytest.mark.slow
def test_the_tiny_run_records_sets_probes_and_text(tiny_run):
    for method in ("joint", "partial_ewc", "lora_replay", "retrieval"):
        r = json.loads((tiny_run / method / "results.json").read_text())
        assert r["tasks"] == ["set0", "set1"]
        assert r["eval_only"]["tasks"] == ["probes", "english", "python"]
        assert "bits_per_token" in r["eval_only"]["views"]
    assert (tiny_run / "plots" / "injected_vs_retained.png").stat().st_size > 0
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["methods"]["partial_ewc"]["data"] == "general"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora_replay", "retrieval"])
def test_generate_on_the_run_asks_in_the_chat_format(tiny_run, method, capsys):
    question = "Where is the Forbidden City?"
    argv = ["generate", str(tiny_run), "--method", method, "--prompt", question]
    assert main([*argv, "--max-new-tokens", "3", "--show-top", "2"]) == 0
    out = capsys.readouterr().out
    assert question in out
    if method == "retrieval":
        assert "retrieved: " in out


def test_every_method_is_one_of_the_ways():
    module = load_experiment("pretrained_knowledge")
    config = module.get_config()
    ways = {"joint", "retrieval"} | {
        f"{w}{s}" for w in ("full", "partial", "lora") for s in ("", "_ewc", "_replay")
    }
    assert set(config["methods"]) == ways
    assert config["stream"]["probe_keep"] == "known" and config["model"]["name"] == "smollm2"
    for name, spec in config["methods"].items():
        if name.endswith(("_ewc", "_replay")):
            assert spec["data"] == "general"


def _tiny_config(path):
    return {
        "seed": 0,
        "stream": {
            "name": "pretrained_facts",
            "tokenizer_path": path,
            "num_entities": 4,
            "num_sets": 2,
            "tiny": True,
            "shots": False,
            "text_windows_per_task": 2,
            "probe_keep": "known",
        },
        "model": {"name": "gguf", "path": path},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 2, "batch_size": 2},
        "methods": {"naive": {}},
    }


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from continual.data.gguf_write import tiny_llama_file

    return tiny_llama_file(tmp_path_factory.mktemp("gguf"))


def test_known_probes_keep_what_the_base_model_answers(tiny_gguf, monkeypatch):
    answered = {3, 10, 40}

    def matches(apply, params, stream):  # stands in for the base model's greedy answers
        return np.array([i in answered for i in stream.probe_ids])

    monkeypatch.setattr(runner, "probe_matches", matches)
    stream = runner.build_stream(_tiny_config(tiny_gguf))
    assert stream.probe_ids == (3, 10, 40)
    spec = {k: v for k, v in _tiny_config(tiny_gguf)["stream"].items() if k != "name"}
    direct = pretrained_facts(**{**spec, "probe_keep": [3, 10, 40]})
    for a, b in zip(stream.tasks, direct.tasks, strict=True):
        assert a.name == b.name
        for k in a.test:
            np.testing.assert_array_equal(a.test[k], b.test[k])


def test_known_probes_of_a_model_that_knows_none_is_one_line(tiny_gguf):
    with pytest.raises(ConfigError, match="answers none of the 83 probes") as e:
        runner.build_stream(_tiny_config(tiny_gguf))  # random weights answer nothing
    assert "\n" not in str(e.value)


def test_known_probes_need_a_pretrained_model(tiny_gguf):
    config = _tiny_config(tiny_gguf)
    config["model"] = {"name": "transformer", "num_layers": 1, "d_model": 16, "num_heads": 2}
    with pytest.raises(ConfigError, match="asks a pretrained model"):
        runner.build_stream(config)


def test_the_smoke_config_selects_one_method_of_each_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_DATA", str(tmp_path))  # where "tiny" writes its model
    module = load_experiment("pretrained_knowledge")
    config = runner.configure(*experiment_config(module, None, smoke=True))
    assert config["run"] == ["joint", "partial_ewc", "lora_replay", "retrieval"]


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_one_line(tiny_run, capsys):
    argv = ["generate", str(tiny_run), "--method", "lora_replay", "--prompt", "word " * 3000]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "longer than the model's context of 2048" in err
