"""Knowledge injection: the facts stream, exact match as greedy decoding, retrieval, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from continual import reload, retrieval, runner
from continual.cli import main
from continual.config import ConfigError
from continual.data.facts import fact_text, renderings
from continual.data.text import END, PAD
from continual.generate import make_generate
from continual.losses import answers
from continual.models.transformer import Transformer
from continual.streams.knowledge import facts as fact_stream


def test_sequences_are_question_then_answer_with_targets_on_the_answer_only():
    s = fact_stream(num_entities=4, num_sets=2, context=64)
    tok, task = s.tokenizer, s.tasks[1]
    assert s.likelihood == "answers" and s.task_names == ["set0", "set1"]
    facts = s.bank.sets[1]
    assert len(task.train["x"]) == 3 * len(facts) and len(task.test["x"]) == 3 * len(facts)
    assert s.tasks[0].train["x"].shape[1] == task.train["x"].shape[1] == task.test["x"].shape[1]
    question, answer = renderings(facts[0], "train")[0]
    x, y = task.train["x"][0], task.train["y"][0]
    assert tok.decode(x) == question + answer  # the last input is the answer's last character
    assert tok.decode(y) == answer + "[end]"
    start = len(question) - 1  # the question's last character predicts the answer's first
    assert (y[:start] == PAD).all() and y[start] != PAD and y[start + len(answer)] == END
    heldout = fact_stream(num_entities=4, num_sets=2, context=64, test_templates="heldout")
    assert len(heldout.tasks[1].test["x"]) == 2 * len(facts)
    assert tok.decode(heldout.tasks[1].test["x"][0]).startswith(
        renderings(facts[0], "heldout")[0][0]
    )


def _train(model, params, x, y, steps):
    opt = optax.adam(1e-2)
    mask = jnp.ones(model.vocab_size, bool).at[PAD].set(False)

    def loss(params):
        out = model.apply(params, x)
        return jax.vmap(answers.nll, in_axes=(0, 0, None))(out, y, mask).mean()

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0])
    return run(params), mask


@pytest.mark.slow
def test_exact_match_equals_greedy_decoding_until_end():
    # Trained on the training templates, tested on those and on unseen paraphrases: some answers
    # come out right, some wrong; the one-pass metric must agree with decoding every question.
    s = fact_stream(num_entities=3, num_sets=1, context=64, include_demo=True)
    heldout = fact_stream(num_entities=3, num_sets=1, context=64, test_templates="heldout")
    tok = s.tokenizer
    model = Transformer(tok.vocab_size, num_layers=1, d_model=32, num_heads=2, context=64)
    train = s.tasks[0].train
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(train["x"][:1]))
    params, mask = _train(model, params, jnp.asarray(train["x"]), jnp.asarray(train["y"]), 120)
    x = np.concatenate([train["x"], heldout.tasks[0].test["x"]])
    y = np.concatenate([train["y"], heldout.tasks[0].test["y"]])
    metric = jax.vmap(answers.metric_fn, in_axes=(0, 0, None))(model.apply(params, x), y, mask)
    # greedy decoding from each question (its length: the targets' first non-pad position + 1)
    prompt_len = np.argmax(y != PAD, axis=1) + 1
    generate = jax.jit(make_generate(model, max_len=65))
    out = generate(params, x, prompt_len)
    decoded = []
    for i in range(len(x)):
        answer = y[i][y[i] != PAD]  # the answer and its [end]
        new = np.asarray(out.tokens_BxT[i, prompt_len[i] : out.length_B[i]])
        decoded.append(float(np.array_equal(new, answer)))
    assert np.asarray(metric).tolist() == decoded
    assert 0 < np.mean(decoded) < 1  # both outcomes occur


def test_sampled_fisher_reads_only_the_answer_positions():
    y_L = jnp.array([PAD, PAD, 5, 6, END, PAD])
    mask_V = jnp.ones(9, bool).at[PAD].set(False)
    sampled = answers.sample(jax.random.key(0), jnp.zeros((6, 9)), y_L, mask_V)
    assert (sampled[jnp.array([0, 1, 5])] == PAD).all() and (sampled[2:5] != PAD).all()
    assert answers.positions(y_L) == 3


def test_retrieval_rows_grow_the_store_set_by_set():
    s = fact_stream(num_entities=6, num_sets=3, context=160, reader_entities=2)
    rows = retrieval.RetrievalRows(s, k=1)
    recall = rows.recall
    assert recall.shape == (4, 3) and (recall[0] == 0).all()
    assert all(recall[r, j] == 0 for r in range(4) for j in range(r, 3))  # not yet stored
    assert all(recall[r, j] > 0.8 for r in range(1, 4) for j in range(r))
    assert rows.data.num_rows == 12
    tok, fact = s.tokenizer, s.bank.sets[0][0]
    first = tok.decode(np.asarray(rows.data.store)[np.asarray(rows.data.ref)[3 * 3, 0]])
    assert first.startswith(fact_text(fact) + "\n" + renderings(fact)[0][0])
    # with an empty store the question stands alone
    assert tok.decode(np.asarray(rows.data.store)[0]).startswith(renderings(fact)[0][0])


def test_the_reader_trains_on_other_entities_with_the_gold_fact_in_every_prompt():
    s = fact_stream(num_entities=4, num_sets=2, context=200, reader_entities=5)
    assert not {f.entity_id for f in s.bank.reader} & {f.entity_id for f in s.bank.facts}
    task = retrieval.reader_task(s, k=2)
    assert len(task.train["x"]) == 3 * len(s.bank.reader)
    for i, fact in enumerate(s.bank.reader):
        for t in range(3):
            prompt = s.tokenizer.decode(task.train["x"][3 * i + t])
            facts_in_prompt = prompt.split("\n")[:-1]
            assert len(facts_in_prompt) == 2 and fact_text(fact) in facts_in_prompt
    with pytest.raises(ValueError, match="reader_entities"):
        retrieval.reader_task(fact_stream(num_entities=2, num_sets=1, context=160), 1)


def _config(**stream):
    from continual.experiments import knowledge as experiment

    config = experiment.get_config("tiny")
    config["stream"].update(stream)
    return config


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"stream": {"name": "text_domains", "tiny": True, "context": 16, "test_fraction": 0.3}},
            "retrieval needs a stream of facts",
        ),
        ({"retrieval": {"k": 0}}, "k must be a positive integer"),
        ({"retrieval": {"k": 1, "top": 2}}, "unknown key 'top'"),
        ({"retrieval": {"k": 1, "steps": -3}}, "steps must be an integer >= 0"),
        ({"use": ["ewc"], "retrieval": {"k": 1}}, "takes no 'use' or 'joint'"),
        ({"reader_entities": 0}, "set stream.reader_entities > 0"),
    ],
)
def test_bad_retrieval_configs_are_config_errors(change, message):
    config = _config()
    if "stream" in change:
        config["stream"] = change["stream"]
    elif "reader_entities" in change:
        config["stream"]["reader_entities"] = 0
    else:
        config["methods"]["retrieval"] = change
    with pytest.raises(ConfigError, match=message):
        runner.plan(config, ["retrieval"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["run", "knowledge", "--arg", "tiny", "--out", str(out), "--name", "t", "--quiet"]
    assert main(argv) == 0
    return out / "knowledge" / "t"


@pytest.mark.slow
def test_every_way_writes_exact_match_matrices_and_the_old_vs_new_plot(tiny_run):
    names = ["joint", "naive", "ewc", "l2", "replay", "lwf", "retrieval"]
    for name in names:
        r = json.loads((tiny_run / name / "results.json").read_text())
        assert r["metric"] == "exact_match" and r["higher_is_better"] is True
        rows = 1 if name == "joint" else 2
        assert np.asarray(r["matrix"]).shape == (rows, 2)
        assert 0 <= np.min(r["matrix"]) and np.max(r["matrix"]) <= 1
        bits = r["views"]["bits_per_char"]
        assert np.asarray(bits["matrix"]).shape == (rows, 2) and np.min(bits["matrix"]) > 0
    retrieval = json.loads((tiny_run / "retrieval" / "results.json").read_text())
    recall = np.asarray(retrieval["views"]["recall@1"]["matrix"])
    assert recall[0, 1] == 0 and recall[1, 0] > 0.5  # set 1 is retrievable only once it came
    assert retrieval["views"]["recall@1"]["initial"] == [0.0, 0.0]
    assert len(retrieval["curves"]["step"]) == 3
    assert (tiny_run / "plots" / "old_vs_new.png").stat().st_size > 1000
    assert (tiny_run / "retrieval" / "checkpoints").is_dir()


@pytest.mark.slow
def test_generate_with_retrieval_puts_the_fact_into_the_prompt(tiny_run, capsys):
    argv = ["generate", str(tiny_run), "--method", "retrieval", "--prompt", "故宫在哪里?"]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "retrieved: 故宫位于北京市。" and lines[-1].startswith("故宫在哪里?")
    assert main(["generate", str(tiny_run), "--method", "naive", "--prompt", "故宫在哪里?"]) == 0
    assert "retrieved" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_model_that_learned_the_article_fact_answers_it(tmp_path, capsys):
    sets = ["stream.num_entities=1", "stream.num_sets=1", "train.steps=150", "train.eval_every=150"]
    argv = ["run", "knowledge", "--arg", "tiny", "--out", str(tmp_path), "--name", "demo"]
    argv += [a for s in sets for a in ("--set", s)] + ["--method", "naive", "--quiet"]
    assert main([*argv, "--set", "optimizer.learning_rate=0.01", "--no-plots"]) == 0
    r = json.loads((tmp_path / "knowledge" / "demo" / "naive" / "results.json").read_text())
    assert r["matrix"] == [[1.0]]
    capsys.readouterr()
    run_dir = tmp_path / "knowledge" / "demo"
    assert main(["generate", str(run_dir), "--prompt", "故宫在哪里?", "--show-top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "故宫在哪里?在北京" and out[-2].endswith("→ [end]")


@pytest.mark.parametrize(
    "sets, message",
    [
        (["stream.num_entities=0"], "the fact store would be empty"),
        (["stream.context=8"], "more than the context of 8"),
        (["stream.languages=fr"], "unknown template language 'fr'"),
        (["stream.test_templates=exam"], "test_templates must be 'train' or 'heldout'"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, sets, message):
    argv = ["run", "knowledge", "--arg", "tiny", "--out", str(tmp_path), "--quiet"]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_question_longer_than_the_context_is_refused_by_generate(tiny_run, capsys):
    argv = ["generate", str(tiny_run), "--prompt", "Where is the Forbidden City?" * 20]
    assert main(argv) == 2
    assert "longer than the model's context" in capsys.readouterr().err


def test_the_fact_sets_do_not_depend_on_the_reader_entities():
    from continual.data.facts import make_facts

    alone = make_facts(8, 2, seed=3, include_demo=True)
    with_reader = make_facts(8, 2, seed=3, include_demo=True, reader_entities=20)
    assert with_reader.sets == alone.sets and len(with_reader.reader) == 20 * 8
    assert not {f.entity for f in with_reader.reader} & {f.entity for f in alone.facts}


@pytest.mark.slow
def test_bits_per_char_is_summarised_as_lower_is_better(tiny_run):
    from continual.evaluate import summarize

    for name in ("naive", "retrieval"):
        r = json.loads((tiny_run / name / "results.json").read_text())
        bits = r["views"]["bits_per_char"]
        assert bits["summary"] == summarize(bits["matrix"], bits["initial"], False)
        assert bits["summary"] != summarize(bits["matrix"], bits["initial"], True)


def test_distillation_of_sequences_averages_over_real_positions_only():
    from continual.regularisers.lwf import distillation

    out = jax.random.normal(jax.random.key(0), (2, 4, 5))
    target = jax.random.normal(jax.random.key(1), (2, 4, 5))
    seen, valid = jnp.ones(5, bool), jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    per_position = distillation(out.reshape(8, 1, 5), target.reshape(8, 1, 5), seen, 2.0)
    masked = distillation(out, target, seen, 2.0, valid)
    assert masked[0] == pytest.approx(float(per_position[:2].mean()), rel=1e-6)
    assert masked[1] == pytest.approx(float(distillation(out, target, seen, 2.0)[1]), rel=1e-6)


@pytest.mark.slow
def test_an_empty_retrieval_section_still_retrieves(tiny_run, tmp_path):
    config = json.loads((tiny_run / "config.json").read_text())
    config["methods"]["retrieval"]["retrieval"] = {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "run.json").write_text((tiny_run / "run.json").read_text())
    prompt, facts, chat = reload.prompt_for(tmp_path, "retrieval", "故宫在哪里?")
    assert facts == ["故宫位于北京市。"] and prompt == "故宫位于北京市。\n故宫在哪里?" and not chat


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "--set", "stream.context=500", "--set", "methods.retrieval.retrieval.k=4"],
            "more than the model's context of 160; raise model.context or lower k",
        ),
        (
            ["run", "--method", "ewc", "--set", "regularisers.ewc.estimator=exact"],
            "use estimator 'sampled' or 'empirical' for answers",
        ),
        (
            ["sweep", "--grid", "regularisers.ewc.strength=1,10"],
            "not in a sweep (choose the others with --method)",
        ),
    ],
)
def test_bad_knowledge_configs_are_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    command, *rest = argv
    assert main([command, "knowledge", "--arg", "tiny", "--out", str(tmp_path), *rest]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_reader_resumes_to_the_uninterrupted_results(tiny_run, tmp_path):
    from test_resume import cli

    run = ["run", "knowledge", "--arg", "tiny", "--method", "retrieval", "--quiet", "--no-plots"]
    run += ["--set", "checkpoint.every_chunks=1", "--out", str(tmp_path), "--name", "x"]
    killed = cli(run, tmp_path, fault="chunk:3")  # the reader trains 4 chunks of 2 steps
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "knowledge" / "x"
    assert not (run_dir / "retrieval" / "results.json").exists()
    saved = [p.name for p in (run_dir / "retrieval" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(map(int, saved)) < 8  # a checkpoint within the reader's 8 steps
    done = cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
    assert done.returncode == 0, done.stderr

    def numbers(path):
        r = json.loads((path / "retrieval" / "results.json").read_text())
        r.pop("timing")
        return r

    assert numbers(run_dir) == numbers(tiny_run)
