"""The byte-level BPE tokenizer: round trips on a tiny written vocabulary, and llama.cpp's own ids
for SmolLM2 (tests/fixtures/smollm2_llamacpp.json) when the real GGUF is at hand (never fetched)."""

import dataclasses
import json
from pathlib import Path

import pytest

from continual.data.bpe import BPETokenizer
from continual.data.gguf import (
    SPECIAL_TOKENS,
    byte_to_unicode,
    read_llama,
    read_tokenizer_metadata,
)
from continual.data.gguf_write import TINY, tiny_vocabulary, write_tiny_llama
from continual.data.smollm2 import smollm2_path

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "smollm2_llamacpp.json").read_text(encoding="utf-8")
)
SPEC = dataclasses.replace(TINY, num_layers=1, context_length=64)  # one block suffices here
TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see.",
    "code": "def f(x):\n    return {'a': [x, 2]}  # comment\n\tprint(f(3))\n",
    "digits": "3.14159 and 1,000,000 and 2026-12-04 and 0x1F",
    "spaces": "a  b   c    d     e",
    "whitespace": " \t \n\n\t\tx\r\n   \n  ",
    "trailing": "ends with spaces   ",
    "chinese": "北京是中国的首都，也是一座历史悠久的城市。",
    "accents": "café naïve façade Ångström déjà vu e\u0301",
    "emoji": "emoji 🤖🎉👍🏽 and 🇫🇷",
    "mixed": "日本語 한국어 العربية हिन्दी ½ x² ∑ Ⅻ １２３",
    "specials": "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
    "empty": "",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> BPETokenizer:
    """The tokenizer of a tiny model written to a GGUF file and read back."""
    path = tmp_path_factory.mktemp("bpe") / "tiny.gguf"
    write_tiny_llama(path, SPEC, seed=0)
    _, _, meta = read_llama(path)
    return BPETokenizer.from_metadata(meta)


@pytest.mark.parametrize("name", TEXTS)
def test_round_trip_on_the_tiny_vocabulary(tiny, name):
    ids = tiny.encode(TEXTS[name])
    assert all(0 <= i < tiny.vocab_size for i in ids)
    assert tiny.decode(ids) == TEXTS[name]


def test_merges_apply_and_digits_split(tiny):
    ids = tiny.encode("the capital 12345")
    pieces = [tiny.token(i) for i in ids]
    assert pieces[-5:] == ["1", "2", "3", "4", "5"]  # one piece per digit, the space apart
    assert pieces[-6] == "Ġ"
    assert len(ids) < len("the capital 12345")  # merges were applied
    assert tiny.vocab_size == 400 and len(tiny.encode("\u00e9")) == 2  # bytes, not characters


def test_special_tokens_encode_as_single_ids(tiny):
    assert tiny.special_ids == tuple(range(len(SPECIAL_TOKENS)))
    assert (tiny.bos_id, tiny.eos_id, tiny.pad_id) == (1, 2, 2)
    for i, text in enumerate(SPECIAL_TOKENS):
        assert tiny.encode(text) == [i]
        ids = tiny.encode(f"a{text}b")
        assert ids.count(i) == 1 and tiny.decode(ids) == f"a{text}b"
    assert 1 not in tiny.encode("<|im_start|") and 1 not in tiny.encode("<|im_start |>")


def test_a_byte_without_a_token_is_dropped_after_merging_around_it():
    """As llama.cpp does (SmolLM2 lacks \\x04): the byte still separates its neighbours."""
    meta = tiny_vocabulary(400)
    missing = byte_to_unicode()[4]
    i = meta["tokenizer.ggml.tokens"].index(missing)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        meta[key] = meta[key][:i] + meta[key][i + 1 :]
    tok = BPETokenizer.from_metadata(meta)
    assert [tok.token(t) for t in tok.encode("f())")] == ["f", "(", "))"]
    assert [tok.token(t) for t in tok.encode("f()\x04)")] == ["f", "(", ")", ")"]
    assert tok.decode(tok.encode("a\x04b")) == "ab"


def test_decode_refuses_ids_outside_the_vocabulary(tiny):
    with pytest.raises(ValueError, match="token id 400 is outside the vocabulary of 400"):
        tiny.decode([5, 400])


def test_chat_format(tiny):
    system = "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
    assert tiny.chat("Hi?") == system + "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert tiny.chat("Hi?", add_generation_prompt=False).endswith("Hi?<|im_end|>\n")
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert tiny.chat(own).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert tiny.chat([], add_generation_prompt=False) == ""
    ids = tiny.encode(tiny.chat("Hi?"))
    assert ids[0] == tiny.bos_id and ids.count(tiny.eos_id) == 2
    with pytest.raises(ValueError, match="str 'role' and 'content'"):
        tiny.chat([{"role": "user"}])


def test_chat_matches_jinja_renderings_of_smollm2s_template():
    """The fixture holds jinja2's renderings of the real file's tokenizer.chat_template."""
    meta = tiny_vocabulary(300) | {"tokenizer.chat_template": FIXTURE["chat_template"]}
    tok = BPETokenizer.from_metadata(meta)
    assert len(FIXTURE["chats"]) >= 4
    for case in FIXTURE["chats"]:
        assert tok.chat(case["messages"], case["add_generation_prompt"]) == case["text"]
    chat_prompt = next(p for p in FIXTURE["prompts"] if p["name"] == "chat_capital")
    assert tok.chat("What is the capital of France?") == chat_prompt["text"]


def test_chat_refuses_a_template_that_is_not_chatml():
    meta = tiny_vocabulary(300) | {"tokenizer.chat_template": "{{ bos_token }}[INST] ..."}
    with pytest.raises(ValueError, match="not ChatML"):
        BPETokenizer.from_metadata(meta).chat("Hi")


def test_json_round_trip(tiny):
    again = BPETokenizer.from_json(tiny.to_json())
    for text in TEXTS.values():
        assert again.encode(text) == tiny.encode(text)
    assert again.chat("Hi") == tiny.chat("Hi")
    assert (again.special_ids, again.pad_id, again.vocab_size) == (
        tiny.special_ids,
        tiny.pad_id,
        tiny.vocab_size,
    )
    for bad in ["{", "[]", '{"format": "other"}']:
        with pytest.raises(ValueError, match="not a tokenizer JSON"):
            BPETokenizer.from_json(bad)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tokenizer.ggml.model": "llama"}, "tokenizer model 'llama' is not supported"),
        ({"tokenizer.ggml.pre": "llama-bpe"}, "pre-tokenizer 'llama-bpe' is not supported"),
        ({"tokenizer.ggml.tokens": []}, "tokens is missing or empty"),
        ({"tokenizer.ggml.merges": None}, "merges is missing"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "2 token types for 300 tokens"),
        ({"tokenizer.ggml.merges": ["Ġ t", "a b c"]}, "merge 'a b c' is not two tokens"),
        ({"tokenizer.ggml.merges": ["q z"]}, "merge 'q z' is not two tokens"),
        ({"tokenizer.ggml.eos_token_id": 300}, "eos_token_id is 300, not a token id below 300"),
        ({"tokenizer.ggml.eos_token_id": None}, "eos_token_id is missing"),
    ],
)
def test_refuses_metadata_it_cannot_reproduce(change, match):
    meta = {k: v for k, v in (tiny_vocabulary(300) | change).items() if v is not None}
    with pytest.raises(ValueError, match=match) as info:
        BPETokenizer.from_metadata(meta)
    assert "\n" not in str(info.value)


def test_refuses_a_repeated_token():
    meta = tiny_vocabulary(300)
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"][:-1], "a"]
    meta["tokenizer.ggml.merges"] = meta["tokenizer.ggml.merges"][:-1]
    with pytest.raises(ValueError, match="repeats 1 tokens"):
        BPETokenizer.from_metadata(meta)


# --- the real SmolLM2 tokenizer against llama.cpp --------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> BPETokenizer:
    try:
        path = smollm2_path(download=False)
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2's GGUF is not in the cache ({e})")
    return BPETokenizer.from_metadata(read_tokenizer_metadata(path))


def test_smollm2_tokenizer_facts(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.special_ids == tuple(range(17))
    assert [smollm2.token(i) for i in range(17)] == list(SPECIAL_TOKENS)
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (1, 2, 2)
    assert smollm2.chat_template == FIXTURE["chat_template"]


@pytest.mark.parametrize(
    "case",
    FIXTURE["prompts"] + FIXTURE["tokenize"],
    ids=lambda c: c.get("name", repr(c["text"][:24])),
)
def test_smollm2_ids_match_llama_cpp(smollm2, case):
    assert smollm2.encode(case["text"]) == case["ids"]
    # llama.cpp's detokenized text: the text itself, less bytes SmolLM2 has no token for (\x04)
    assert smollm2.decode(case["ids"]) == case.get("decoded", case["text"])


def test_smollm2_decodes_llama_cpps_greedy_text(smollm2):
    for case in FIXTURE["prompts"]:
        assert smollm2.decode(case["greedy_ids"]) == case["greedy_text"], case["name"]
