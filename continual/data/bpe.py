"""A byte-level BPE tokenizer built from a GGUF's own vocabulary and merges (`tokenizers` library).

It reproduces llama.cpp's `gpt2` tokenizer with the `smollm` pre-tokenizer (SmolLM2's): llama.cpp
first splits the text at every number character (\\p{N}, one digit per piece), then splits each
piece with GPT-2's pattern, then maps bytes to GPT-2's printable characters and applies the merges
in rank order. Control tokens (SmolLM2's first 17, such as <|im_start|>) are matched in the text
before any of that and always encode as single ids; decoding does not clean up spaces
(llama.cpp sets clean_spaces = false for smollm). SmolLM2's vocabulary lacks 21 of the 256 byte
tokens (control bytes such as \x04, and bytes that never occur in UTF-8): like llama.cpp, this
tokenizer drops such a byte after merging around it. tests/fixtures/smollm2_llamacpp.json holds
llama.cpp's own ids.

`chat` writes the ChatML format of SmolLM2's tokenizer.chat_template directly, with the default
system message found in that template: jinja2 is not a dependency, so the template is not rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from continual.data.gguf import CONTROL, USER_DEFINED

# llama.cpp's regexes for the smollm pre-tokenizer, applied in turn. Its hand-written GPT-2
# splitter also takes a lone whitespace run the lookahead rejects, hence the final \s+.
_NUMBER = r"\p{N}"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = ("smollm",)
_KEYS = (  # the tokenizer.* metadata a BPETokenizer is built from (and serialised as)
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)
_FORMAT = "continual.bpe/1"
_UNKNOWN_BYTE = "<byte without a token>"
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
# SmolLM2's template inserts this system turn when the first message is not a system message.
_DEFAULT_SYSTEM = re.compile(
    r"messages\[0\]\['role'\] != 'system' %\}\{\{ '<\|im_start\|>system\n(.*?)<\|im_end\|>\n' \}\}",
    re.DOTALL,
)


def _id(meta: dict, key: str, n: int, default: int | None = None) -> int | None:
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"{key} is {value!r}, not a token id below {n}")
    return value


class BPETokenizer:
    """Text <-> token ids for a GGUF `gpt2` vocabulary with the `smollm` pre-tokenizer."""

    def __init__(self, meta: dict[str, Any]):
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer model {model!r} is not supported (only byte-level 'gpt2')")
        pre = meta.get("tokenizer.ggml.pre")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"pre-tokenizer {pre!r} is not supported (only {PRE_TOKENIZERS})")
        tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
        if not tokens or not isinstance(tokens, list):
            raise ValueError("tokenizer.ggml.tokens is missing or empty")
        if not isinstance(merges, list):
            raise ValueError("tokenizer.ggml.merges is missing")
        n = len(tokens)
        types = meta.get("tokenizer.ggml.token_type", [1] * n)
        if len(types) != n:
            raise ValueError(f"{len(types)} token types for {n} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != n:
            raise ValueError(f"the vocabulary repeats {n - len(vocab)} tokens")
        pairs = []
        for m in merges:
            pair = m.split(" ") if isinstance(m, str) else []
            if len(pair) != 2 or pair[0] + pair[1] not in vocab:
                raise ValueError(f"merge {m!r} is not two tokens joining into a third")
            pairs.append((pair[0], pair[1]))
        self.bos_id = _id(meta, "tokenizer.ggml.bos_token_id", n)
        self.eos_id = _id(meta, "tokenizer.ggml.eos_token_id", n)
        if self.eos_id is None:
            raise ValueError("tokenizer.ggml.eos_token_id is missing")
        self.pad_id = _id(meta, "tokenizer.ggml.padding_token_id", n, self.eos_id)
        self.unk_id = _id(meta, "tokenizer.ggml.unknown_token_id", n)
        self.special_ids = tuple(i for i, t in enumerate(types) if t == CONTROL)
        self.chat_template = meta.get("tokenizer.chat_template")
        self.vocab_size = n
        self._meta = {k: meta[k] for k in _KEYS if k in meta}

        # A byte with no token becomes this extra symbol, which no merge crosses and encode drops:
        # llama.cpp's BPE does the same. It holds a real space, which no byte-level token does.
        self._drop = n
        vocab_unk = vocab | {_UNKNOWN_BYTE: n}
        bpe = models.BPE(vocab_unk, pairs, unk_token=_UNKNOWN_BYTE, fuse_unk=False)
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_NUMBER), behavior="isolated"),
                pre_tokenizers.Split(Regex(_GPT2), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        control = [AddedToken(tokens[i], special=True, normalized=False) for i in self.special_ids]
        user = [
            AddedToken(tokens[i], special=False, normalized=False)
            for i in range(n)
            if types[i] == USER_DEFINED
        ]
        tok.add_special_tokens(control)
        tok.add_tokens(user)
        for t in control + user:
            if tok.token_to_id(t.content) != vocab[t.content]:
                raise ValueError(f"special token {t.content!r} did not keep its id")
        self._tok = tok

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> BPETokenizer:
        """Build from a GGUF's tokenizer.* metadata (read_llama's third element)."""
        return cls(meta)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it become their single ids; no BOS."""
        return [i for i in self._tok.encode(text, add_special_tokens=False).ids if i != self._drop]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens included, invalid UTF-8 replaced by U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def token(self, i: int) -> str:
        """The vocabulary entry of id `i` (byte-level characters: a space is 'Ġ')."""
        return self._meta["tokenizer.ggml.tokens"][i]

    def chat(
        self, messages: str | Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The ChatML prompt of SmolLM2's chat template: a string is a single user message."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        template = self.chat_template
        if template is not None and _IM_START not in template:
            raise ValueError("the chat template is not ChatML; rendering it needs jinja2")
        parts = []
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
                raise ValueError(f"a chat message is a dict with str 'role' and 'content': {m!r}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"a chat message is a dict with str 'role' and 'content': {m!r}")
        found = _DEFAULT_SYSTEM.search(template or "")
        if found and messages and messages[0]["role"] != "system":
            parts.append(f"{_IM_START}system\n{found.group(1)}{_IM_END}\n")
        parts += [f"{_IM_START}{m['role']}\n{m['content']}{_IM_END}\n" for m in messages]
        if add_generation_prompt:
            parts.append(f"{_IM_START}assistant\n")
        return "".join(parts)

    def to_json(self) -> str:
        """The tokenizer as JSON: the GGUF metadata it was built from, so it rebuilds exactly."""
        return json.dumps({"format": _FORMAT, "metadata": self._meta}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """The tokenizer that to_json wrote."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a tokenizer JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a tokenizer JSON (want format {_FORMAT!r})")
        return cls(data["metadata"])
