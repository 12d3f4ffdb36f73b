"""The pretrained_facts stream on a tiny GGUF (random weights, a 400-token byte-level BPE)."""

import dataclasses

import jax
import numpy as np
import pytest
import test_bpe

from continual import streams
from continual.data import probes as pd
from continual.data.gguf_write import write_tiny_llama
from continual.data.text import PAD, load_corpus
from continual.generate import make_generate
from continual.models.llama_weights import params_from_gguf
from continual.streams.pretrained import (
    chat_prompt,
    known_probes,
    pretrained_facts,
    probe_matches,
)
from continual.types import stack_tasks

SPEC = dataclasses.replace(test_bpe.SPEC, context_length=2048)  # its tiny vocabulary
SMALL = {"num_entities": 4, "num_sets": 2, "tiny": True, "shots": False, "text_windows_per_task": 3}


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrained") / "tiny.gguf"
    tensors = write_tiny_llama(path, SPEC, seed=0)
    return str(path), tensors


@pytest.fixture(scope="module")
def stream(gguf):
    return pretrained_facts(gguf[0], **SMALL)


def test_the_probe_set():
    assert len(pd.PROBES) >= 60
    questions = [p.question for p in pd.PROBES]
    assert len(set(questions)) == len(questions)
    assert not {q for q, _ in pd.SHOTS} & set(questions)  # no demonstration is a probe
    for p in pd.PROBES:
        assert 1 <= len(p.answer.split()) <= 3 and p.answer == p.answer.strip()
        assert not p.answer.endswith(".") and p.question.endswith("?")
    paris = pd.PROBES[0]
    assert pd.accepts(paris, " Paris") and not pd.accepts(paris, "Paris.")
    nile = next(p for p in pd.PROBES if p.answer == "Nile")
    assert pd.accepts(nile, "The Nile")


def test_layout(stream):
    assert "pretrained_facts" in streams.STREAMS
    names = [t.name for t in stream.tasks]
    assert names == ["set0", "set1", "probes", "english", "python"]
    assert [t.eval_only for t in stream.tasks] == [False, False, True, True, True]
    assert [t.id for t in stream.tasks] == list(range(5))
    assert stream.likelihood == "answers" and stream.num_outputs == 400 == SPEC.vocab_size
    for t in stream.tasks:
        for split in (t.train, t.test):
            assert split["x"].shape[1:] == split["y"].shape[1:] == (stream.width,)
            assert split["x"].dtype == split["y"].dtype == np.int32
        assert t.label_mask.all() and t.label_mask.shape == (400,)
    # English facts: 2 entities x 4 attributes x 3 training templates per set
    assert stream.tasks[0].train["x"].shape[0] == stream.tasks[0].test["x"].shape[0] == 24
    for t in stream.eval_tasks:
        assert len(t.train["x"]) == 0  # never trained
    assert len(stream.tasks[2].test["x"]) == len(pd.PROBES) and stream.probe_ids[:2] == (0, 1)
    assert [len(t.test["x"]) for t in stream.tasks[3:]] == [3, 3]
    train, test = stack_tasks(stream.tasks, "train"), stack_tasks(stream.tasks, "test")
    assert train.num_rows == 2 and test.num_rows == 5
    assert test.eval_only.tolist() == [False, False, True, True, True]


def _split(tok, x, y):
    """(prompt text, target text, teacher-forced continuation) of one example."""
    at = np.flatnonzero(y != PAD)
    assert (np.diff(at) == 1).all()  # one run of targets: the answer and the eos
    prompt = tok.decode(x[: at[0] + 1].tolist())
    # the input after the prompt is the targets shifted by one (teacher forcing)
    np.testing.assert_array_equal(x[at[0] + 1 : at[-1] + 1], y[at[:-1]])
    assert (x[at[-1] + 1 :] == PAD).all()
    return prompt, tok.decode(y[at].tolist())


def test_targets_are_the_answer_and_the_end_of_turn(stream):
    tok = stream.tokenizer
    fact = stream.bank.sets[0][0]  # the demo entity: "Where is the Forbidden City?"
    prompt, target = _split(tok, stream.tasks[0].train["x"][0], stream.tasks[0].train["y"][0])
    assert target == "Beijing<|im_end|>"  # the bare value, as the demonstrations answer
    assert prompt == chat_prompt(tok, "Where is the Forbidden City?", pd.SYSTEM, ())
    assert fact.entity == "the Forbidden City"
    prompt, target = _split(tok, stream.tasks[2].test["x"][0], stream.tasks[2].test["y"][0])
    assert target == "Paris<|im_end|>"
    assert prompt == (
        "<|im_start|>system\nAnswer with one word or number.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    for t in stream.tasks[:3]:
        for split in (t.train, t.test):
            for y in split["y"]:
                assert tok.decode(y[y != PAD].tolist()).endswith("<|im_end|>")


def test_chat_format_with_demonstrations_and_the_default_system(gguf):
    s = pretrained_facts(gguf[0], **{**SMALL, "shots": True, "system": None}, context=2048)
    x, y = s.tasks[2].test["x"][0], s.tasks[2].test["y"][0]
    prompt, _ = _split(s.tokenizer, x, y)
    assert prompt.startswith("<|im_start|>system\nYou are a tiny test model.<|im_end|>\n")
    turns = "".join(
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
        for q, a in pd.SHOTS
    )
    assert turns in prompt and prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert s.prompt("What is the capital of France?") == prompt
    assert s.width > pretrained_facts(gguf[0], **SMALL).width


def test_general_text_is_a_target_everywhere(stream):
    tok = stream.tokenizer
    for t in stream.tasks[3:]:
        x, y = t.test["x"], t.test["y"]
        assert (y != PAD).all() and (x != PAD).all()
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        for i in range(len(x)):  # a window of the text itself, evenly spaced, first to last
            assert tok.decode(np.append(x[i], y[i, -1]).tolist()) in load_corpus(t.name, tiny=True)
        assert x[0, 0] == tok.encode(load_corpus(t.name, tiny=True))[0]


def test_a_text_shorter_than_a_window_is_padded_not_refused(gguf):
    s = pretrained_facts(
        gguf[0], **{**SMALL, "shots": True}, texts=("python",), probes=False, context=2048
    )
    assert [t.name for t in s.tasks] == ["set0", "set1", "python"]
    x, y = s.tasks[-1].test["x"], s.tasks[-1].test["y"]
    n = len(s.tokenizer.encode(load_corpus("python", tiny=True)))
    assert n < s.width + 1  # with the demonstrations, a window is longer than the lines
    assert (y[:, : n - 1] != PAD).all() and (y[:, n - 1 :] == PAD).all()
    assert s.tokenizer.decode(np.append(x[0, : n - 1], y[0, n - 2]).tolist()) == load_corpus(
        "python", tiny=True
    )


def test_probe_keep_restricts_the_probe_task_and_keeps_the_width(stream, gguf):
    kept = pretrained_facts(gguf[0], **SMALL, probe_keep=[5, 0, 7])
    assert kept.probe_ids == (5, 0, 7) and kept.width == stream.width
    np.testing.assert_array_equal(kept.tasks[2].test["y"], stream.tasks[2].test["y"][[5, 0, 7]])
    assert known_probes(kept, [True, False, True]) == [5, 7]
    assert known_probes(stream, np.arange(len(pd.PROBES)) < 2) == [0, 1]
    with pytest.raises(ValueError, match="2 results for the 3 questions"):
        known_probes(kept, [True, False])


def test_probe_matches_agree_with_greedy_decoding(gguf):
    path, tensors = gguf
    s = pretrained_facts(path, **SMALL, probe_keep=list(range(6)), texts=())
    spec = SPEC
    model, params = params_from_gguf(spec, tensors, context=s.width + 8)
    matches = probe_matches(model.apply, params, s, batch_size=4)
    assert matches.shape == (6,) and matches.dtype == bool
    x, y = s.tasks[2].test["x"], s.tasks[2].test["y"]
    first = np.argmax(y != PAD, axis=1)  # the prompt is x[:first + 1]
    generate = jax.jit(make_generate(model, max_len=s.width + 1, end_id=2, pad_id=None))
    out = generate(params, x, first + 1, None)
    for i in range(6):
        want = y[i][y[i] != PAD]
        got = np.asarray(out.tokens_BxT[i, first[i] + 1 : first[i] + 1 + len(want)])
        assert bool(matches[i]) == bool((got == want).all())


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"context": 20}, "more than the context of 20"),
        ({"texts": ("klingon",)}, "texts must be distinct corpora"),
        ({"texts": ("python", "python")}, "texts must be distinct corpora"),
        ({"text_windows_per_task": 0}, "text_windows_per_task must be an integer >= 1"),
        ({"test_templates": "odd"}, "test_templates must be"),
        ({"probe_keep": [0, 999]}, "999 is not a probe index"),
        ({"probe_keep": [1, 1]}, "repeats"),
        ({"probe_keep": []}, "probe_keep is empty"),
        ({"probe_keep": "0,1"}, "list of probe indices"),
        ({"probe_keep": [0], "probes": False}, "probe_keep needs probes=true"),
        ({"system": 3}, "system must be a string"),
        ({"num_sets": 3}, "must divide num_entities"),
    ],
)
def test_bad_values_are_one_line(gguf, bad, message):
    with pytest.raises(ValueError, match=message) as e:
        pretrained_facts(gguf[0], **{**SMALL, **bad})
    assert "\n" not in str(e.value)


def test_a_missing_tokenizer_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        pretrained_facts(str(tmp_path / "none.gguf"), **SMALL)


@pytest.mark.slow
def test_a_run_trains_the_sets_and_measures_probes_and_text_apart(gguf):
    from continual import models, runner

    if "gguf" not in models.MODELS:
        pytest.skip("no 'gguf' model to load the tiny GGUF")
    path = gguf[0]
    config = {
        "seed": 0,
        "stream": {"name": "pretrained_facts", "tokenizer_path": path, **SMALL},
        "model": {"name": "gguf", "path": path},
        "optimizer": {"name": "adam", "learning_rate": 1e-2},
        "train": {"steps": 10, "batch_size": 8, "eval_every": 5},
        "methods": {"naive": {}, "joint": {"joint": True}},
    }
    _, results = runner.run(config)
    for name, rows in (("naive", 2), ("joint", 1)):
        r = results[name]
        assert r.tasks == ["set0", "set1"] and np.shape(r.matrix) == (rows, 2)
        e = r.eval_only
        assert e["tasks"] == ["probes", "english", "python"]
        assert np.shape(e["matrix"]) == (rows, 3)
        bits = e["views"]["bits_per_token"]  # the answers likelihood's second reading
        assert np.shape(bits["matrix"]) == (rows, 3) and np.isfinite(bits["initial"]).all()
        assert bits["initial"] == results["naive"].eval_only["views"]["bits_per_token"]["initial"]
        assert bits["matrix"][-1] != bits["initial"]  # fine-tuning moved the general text


def test_general_text_is_the_training_split_shaped_as_the_tasks(stream):
    g = stream.general
    assert g["x"].shape == (2 * 32, stream.width) == g["y"].shape  # 32 windows per corpus
    assert (g["x"][:, 1:] == g["y"][:, :-1])[g["y"][:, :-1] != PAD].all()  # next tokens
    assert stream.unit == "token" and stream.reading("bits_per_char") == "bits_per_token"


def _general_config(path, **methods):
    return {
        "seed": 0,
        "stream": {"name": "pretrained_facts", "tokenizer_path": path, **SMALL},
        "model": {"name": "gguf", "path": path},
        "optimizer": {"name": "adam", "learning_rate": 1e-2},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2},
        "regularisers": {
            "ewc": {"strength": 10.0, "estimator": "empirical", "num_samples": 4},
            "replay": {"capacity": 8, "batch_size": 4},
        },
        "methods": methods,
    }


def test_general_data_consolidates_once_before_the_first_task(gguf):
    from continual import runner
    from continual.program import compile_program

    config = _general_config(
        gguf[0],
        ewc={"use": ["ewc"], "data": "general"},
        replay={"use": ["replay"], "data": "general", "train": {"lora": {"rank": 2}}},
    )
    p = runner.plan(config)
    general = p.stream.general
    for m in p.methods:
        assert m.general["x"].shape == general["x"].shape
        program, states = compile_program(
            m, runner.initial_state(m, p.key), p.stream, p.train, p.test, p.settings
        )
        ready = program.prepare(states)
        reg = jax.tree.map(lambda a: np.asarray(a[0]), ready.reg_state[0])  # member 0
        if m.name == "ewc":  # the Fisher of general text, anchored at the pretrained weights
            assert int(reg.count) == 1
            # one slot (it consolidates once), not one per task: a step reads one Fisher
            slots = {f.shape[0] for f in jax.tree.leaves(reg.fisher)}
            assert slots == {1} and len(p.stream.trained_tasks) > 1
            first = jax.tree.map(lambda a: a[0], reg.anchor)  # slot 0
            assert all(jax.tree.leaves(jax.tree.map(np.array_equal, first, m.params)))
            assert sum(float(f[0].sum()) for f in jax.tree.leaves(reg.fisher)) > 0
        else:  # a memory of general text from the first step
            memory = reg.memory
            assert bool(memory.filled.all())
            rows = {tuple(r) for r in np.asarray(general["x"])}
            assert {tuple(r) for r in memory.rows["x"]} <= rows
        # the end of a task consolidates nothing more
        before = jax.device_get(ready.reg_state)
        after, _ = program.finish(ready, program.train, np.int32(0))  # donates `ready`
        same = jax.tree.map(np.array_equal, jax.device_get(after.reg_state), before)
        assert all(jax.tree.leaves(same))


@pytest.mark.slow
def test_general_methods_and_a_pretrained_reader_run(gguf):
    from continual import runner

    config = _general_config(
        gguf[0],
        naive={},
        ewc={"use": ["ewc"], "data": "general"},
        replay={"use": ["replay"], "data": "general"},
        retrieval={"retrieval": {"k": 1, "steps": 0}},
    )
    _, results = runner.run(config)
    naive, reader = results["naive"], results["retrieval"]
    for r in results.values():
        assert r.tasks == ["set0", "set1"] and np.isfinite(r.matrix).all()
    assert np.shape(reader.matrix) == (2, 2)
    recall = reader.views["recall@1"]
    assert recall["initial"] == [0.0, 0.0] and recall["matrix"][1][0] > 0  # the store fills
    held = reader.eval_only  # the model never changes: the base model's columns, every row
    assert held["initial"] == naive.eval_only["initial"]
    assert held["matrix"] == [held["initial"]] * 2
    bits = held["views"]["bits_per_token"]
    # (the reader's evaluation is a program of its own: equal to rounding)
    np.testing.assert_allclose(
        bits["initial"], naive.eval_only["views"]["bits_per_token"]["initial"], rtol=1e-5
    )

    def text_bits(r):  # bits per token of the general text (english, python) after the last set
        return np.array(r.eval_only["views"]["bits_per_token"]["matrix"][-1][1:])

    assert (text_bits(results["ewc"]) != text_bits(naive)).all()
    assert (text_bits(results["replay"]) < text_bits(naive)).all()  # it replays that text


@pytest.mark.parametrize(
    "method, message",
    [
        ({"use": ["ewc"], "data": "other"}, "data must be one of 'tasks', 'general'"),
        ({"data": "general"}, "needs regularisers in 'use'"),
        ({"retrieval": {"k": 1, "steps": -1}}, "steps must be an integer >= 0"),
    ],
)
def test_bad_general_and_reader_settings_are_one_line(gguf, method, message):
    from continual import runner
    from continual.config import ConfigError

    with pytest.raises(ConfigError, match=message) as e:
        runner.plan(_general_config(gguf[0], m=method))
    assert "\n" not in str(e.value)


def test_general_data_needs_a_stream_that_has_it():
    from continual import runner
    from continual.config import ConfigError

    config = {
        "stream": {"name": "facts", "num_entities": 4, "num_sets": 2, "context": 64},
        "model": {"name": "transformer", "num_layers": 1, "d_model": 16, "num_heads": 2},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 2, "batch_size": 4},
        "methods": {"ewc": {"use": ["ewc"], "data": "general"}},
        "regularisers": {"ewc": {"estimator": "empirical"}},
    }
    with pytest.raises(ConfigError, match="stream 'facts' has no general data"):
        runner.plan(config)
