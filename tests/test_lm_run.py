"""The language model through the one runner: text domains, bits per char, generate, devices."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from continual import streams
from continual.cli import main
from continual.data import text
from continual.losses import next_token

from helpers import on_four_devices

TINY = {"context": 8, "train_windows": 6, "test_windows": 3, "test_fraction": 0.3, "tiny": True}
SMALL_MODEL = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2"]
METHODS = ["naive", "ewc", "replay", "lwf", "joint"]


def test_text_domains_share_one_tokenizer_and_fixed_window_shapes():
    s = streams.text_domains(["english", "python", "chinese_poetry"], **TINY)
    tok = s.tokenizer
    assert s.likelihood == "next_token" and s.scenario == "domain"
    assert s.num_outputs == tok.vocab_size and s.task_names == [
        "english",
        "python",
        "chinese_poetry",
    ]
    for t in s.tasks:
        assert t.train["x"].shape == t.train["y"].shape == (6, 8)
        assert t.test["x"].shape == (3, 8) and t.train["x"].dtype == np.int32
        np.testing.assert_array_equal(t.train["x"][:, 1:], t.train["y"][:, :-1])
        assert not t.label_mask[text.PAD] and t.label_mask[1:].all()
        train_text = text.split_corpus(text.load_corpus(t.name, tiny=True), 0.3, 1)[0]
        assert tok.decode(t.train["x"][0]) == train_text[:8]  # evenly spaced from the start
        assert tok.decode(t.train["y"][-1])[-1] == train_text[-1]  # ... to the end
    assert "月" in tok.chars and "def" in tok.decode(tok.encode("def"))
    fewer = streams.text_domains(["english", "python", "chinese_poetry"], **TINY, min_count=3)
    assert fewer.num_outputs < s.num_outputs
    for bad, match in (
        ({"domains": ["english", "english"]}, "distinct"),
        ({"domains": ["klingon"]}, "unknown corpus"),
        ({"context": 0}, "context"),
        ({"context": 500}, "shorter context"),
    ):
        with pytest.raises(ValueError, match=match):
            streams.text_domains(**{**TINY, **bad})


def test_next_token_likelihood_closed_forms():
    mask_V = jnp.array([False, True, True, True])
    y_L = jnp.array([1, 2, 0])  # the last position is [pad]: it does not count
    uniform_LxV = jnp.zeros((3, 4))
    assert next_token.nll(uniform_LxV, y_L, mask_V) == pytest.approx(math.log(3), rel=1e-6)
    assert next_token.metric_fn(uniform_LxV, y_L, mask_V) == pytest.approx(math.log2(3), rel=1e-6)
    sure_LxV = jnp.array([[0, 9, 0, 0], [0, 0, 0, 9], [9, 9, 9, 9]], jnp.float32)
    name, accuracy, higher_is_better = next_token.second
    assert higher_is_better
    assert name == "accuracy" and accuracy(sure_LxV, y_L, mask_V) == pytest.approx(0.5)
    assert not next_token.higher_is_better and next_token.metric == "bits_per_char"
    s_K, w_K = next_token.scores(uniform_LxV, mask_V)
    assert s_K.shape == w_K.shape == (12,) and float(w_K.sum()) == pytest.approx(3.0)
    y = next_token.sample(jax.random.key(0), jnp.zeros((50, 4)), jnp.ones(50, jnp.int32), mask_V)
    assert y.shape == (50,) and (y != text.PAD).all()
    target_L = jnp.array([text.PAD] * 30 + [3] * 20)  # an answer after a question: only its part
    y = next_token.sample(jax.random.key(0), jnp.zeros((50, 4)), target_L, mask_V)
    assert (y[:30] == text.PAD).all() and (y[30:] != text.PAD).all()


@pytest.mark.slow
def test_sampled_token_fisher_averages_to_the_exact_one():
    # The loss is a mean over L positions: the squared gradient of one sampled window is 1/L of
    # its Fisher in expectation, which EWC multiplies back (the exact estimator's scale).
    from continual import models
    from continual.losses import Objective
    from continual.regularisers import fisher_diagonal

    model = models.make("transformer", 6, num_layers=1, d_model=8, num_heads=2, context=8)
    x = jax.random.randint(jax.random.key(1), (4, 8), 1, 6)
    params = model.init(jax.random.key(0), x)
    objective = Objective(model.apply, next_token, jnp.ones((1, 6), bool).at[0, 0].set(False))
    data = {"x": x, "y": x, "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
    exact = fisher_diagonal(objective, params, data, jax.random.key(2), "exact")
    draws = jax.vmap(lambda k: fisher_diagonal(objective, params, data, k, "sampled"))(
        jax.random.split(jax.random.key(3), 300)
    )
    total_exact = sum(float(e.sum()) for e in jax.tree.leaves(exact))
    total_sampled = sum(float(d.mean(0).sum()) for d in jax.tree.leaves(draws))
    assert total_sampled == pytest.approx(total_exact, rel=0.15)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    sets = ["train.steps=20", "train.eval_every=10", *SMALL_MODEL]
    argv = ["run", "lm_domains", "--arg", "tiny", "--out", str(out), "--name", "t"]
    argv += [a for s in sets for a in ("--set", s)] + [a for m in METHODS for a in ("--method", m)]
    assert main([*argv, "--quiet", "--no-plots"]) == 0
    return out / "lm_domains" / "t"


@pytest.mark.slow
def test_every_method_runs_on_text_with_bits_and_accuracy(tiny_run):
    assert text.CharTokenizer.from_json((tiny_run / "tokenizer.json").read_text())
    for name in METHODS:
        r = json.loads((tiny_run / name / "results.json").read_text())
        assert r["metric"] == "bits_per_char" and r["higher_is_better"] is False
        rows = 1 if name == "joint" else 3
        assert np.asarray(r["matrix"]).shape == (rows, 3) and np.isfinite(r["matrix"]).all()
        assert np.asarray(r["initial"]).min() > 4  # untrained: about log2(vocabulary) bits
        acc = r["views"]["accuracy"]
        assert np.asarray(acc["matrix"]).shape == (rows, 3)
        assert 0 <= np.min(acc["matrix"]) and np.max(acc["matrix"]) <= 1
    naive = json.loads((tiny_run / "naive" / "results.json").read_text())
    assert naive["matrix"][0][0] < naive["initial"][0]  # it learns the first domain ...
    assert naive["summary"]["forgetting"] > 0  # ... and forgets it


@pytest.mark.slow
def test_generate_prints_the_likeliest_characters_then_the_completion(tiny_run, capsys):
    argv = ["generate", str(tiny_run), "--method", "replay", "--prompt", "Shall I"]
    assert main([*argv, "--max-new-tokens", "4", "--show-top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(" → " in line for line in lines[:4])
    assert all(len(line.split(" → ")[0].split("  ")) == 3 for line in lines[:4])
    assert lines[-1].startswith("Shall I") and len(lines[-1]) > len("Shall I")
    assert main(["generate", str(tiny_run), "--prompt", "明月", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("明月")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("no run", ["--prompt", "a"], "not a run directory"),
        ("no tokenizer", ["--prompt", "a"], "no tokenizer.json"),
        ("unknown method", ["--prompt", "a", "--method", "ewc2"], "unknown method 'ewc2'"),
        ("long prompt", ["--prompt", "Shall I compare thee"], "longer than the model's context"),
        ("bad number", ["--prompt", "a", "--top-k", "-1"], "--top-k must be >= 0"),
    ],
)
def test_generate_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys, case, extra, message):
    run_dir = tmp_path / "nothing" if case == "no run" else tiny_run
    if case == "no tokenizer":
        run_dir = tmp_path / "copy"
        run_dir.mkdir()
        for name in ("run.json", "config.json"):
            (run_dir / name).write_text((tiny_run / name).read_text())
    before = sorted(p.name for p in tiny_run.rglob("*"))
    assert main(["generate", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tiny_run.rglob("*")) == before  # nothing written


def data_parallel_run() -> dict:
    """A tiny LM run of one member on every local device: its numbers and whether its compiled
    step sums gradients over devices."""
    from continual import runner
    from continual.experiments import lm_domains
    from continual.loop import run_program
    from continual.program import compile_program

    config = lm_domains.get_config("tiny")
    config["model"].update(num_layers=1, d_model=32, num_heads=2)
    config["train"].update(steps=10, eval_every=5, batch_size=8)
    p = runner.plan(config, ["naive"])
    m, settings = p.methods[0], p.settings
    state = runner.initial_state(m, p.key)
    program, states = compile_program(m, state, p.stream, p.train, p.test, settings)
    (r,) = run_program(m, program, states, p.stream, settings)
    return {
        "devices": len(jax.local_devices()),
        "all_reduce": "all-reduce" in program.chunk.as_text(),
        "matrix": r.matrix,
        "curves": r.curves["values"],
    }


FOUR_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
from test_lm_run import data_parallel_run
print(json.dumps(data_parallel_run()))
"""


@pytest.mark.slow
def test_a_run_on_four_devices_shards_the_batch_and_gives_the_numbers_of_one():
    four, one = on_four_devices(FOUR_DEVICES), data_parallel_run()
    assert four["devices"] == 4 and four["all_reduce"]  # gradients summed over the devices
    assert one["devices"] == 1 and not one["all_reduce"]
    np.testing.assert_allclose(four["matrix"], one["matrix"], rtol=1e-5)
    np.testing.assert_allclose(four["curves"], one["curves"], rtol=1e-5)
