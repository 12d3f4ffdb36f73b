"""Small random Llama GGUF files, written with the `gguf` package: the loader's tests read them
end to end without the real model (continual.data.gguf reads them back)."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from continual.data.gguf import (
    ARCH,
    CONTROL,
    NORMAL,
    SPECIAL_TOKENS,
    LlamaSpec,
    byte_to_unicode,
    expected_shapes,
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of
Italy is Rome. What is the capital of Germany? It is Berlin. She said that they would come
back in the evening, when the weather is better than it was in the morning.
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, 2))
2 + 3 = 5. 12 * 12 = 144. In 1969 there were 365 days in the year.
"""
# A rough ASCII version of the smollm pre-tokenizer: the merges need only be valid, not optimal.
_WORDS = re.compile(r"[0-9]| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def tiny_vocabulary(vocab_size: int) -> dict[str, Any]:
    """A byte-level BPE vocabulary of `vocab_size` tokens with SmolLM2's tokenizer.* keys."""
    table = byte_to_unicode()
    base = [*SPECIAL_TOKENS, *(table[b] for b in range(256))]
    if vocab_size < len(base):
        raise ValueError(
            f"a byte-level vocabulary needs at least {len(base)} tokens, not {vocab_size}"
        )
    words = Counter(
        tuple(table[b] for b in w.encode()) for w in _WORDS.findall(_CORPUS)
    )  # each word as a tuple of symbols, with its count
    tokens, merges = list(base), []
    while len(tokens) < vocab_size:
        pairs: Counter = Counter()
        for w, n in words.items():
            for pair in itertools.pairwise(w):
                pairs[pair] += n
        if not pairs:
            raise ValueError(
                f"the tiny corpus supports at most {len(tokens)} tokens, not {vocab_size}"
            )
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by the pair itself
        merges.append(f"{best[0]} {best[1]}")
        tokens.append(best[0] + best[1])
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    template = (  # SmolLM2's template with another default system message
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return {
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [CONTROL] * len(SPECIAL_TOKENS)
        + [NORMAL] * (len(tokens) - len(SPECIAL_TOKENS)),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.chat_template": template,
    }


def random_llama(spec: LlamaSpec, seed: int) -> dict[str, np.ndarray]:
    """Random float32 tensors for `spec` by GGUF name, numpy orientation; the same for a seed."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(spec).items():
        if len(shape) == 1:  # norm gains near 1
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            scale = 1.0 / math.sqrt(shape[1])
            tensors[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return tensors


def llama_metadata(spec: LlamaSpec) -> dict[str, Any]:
    """The llama.* keys that describe `spec`, as llama.cpp's converter writes them."""
    p = f"{ARCH}."
    return {
        p + "block_count": spec.num_layers,
        p + "context_length": spec.context_length,
        p + "embedding_length": spec.d_model,
        p + "feed_forward_length": spec.mlp_width,
        p + "attention.head_count": spec.num_heads,
        p + "attention.head_count_kv": spec.num_kv_heads,
        p + "rope.freq_base": float(spec.rope_base),
        p + "attention.layer_norm_rms_epsilon": float(spec.norm_eps),
        p + "vocab_size": spec.vocab_size,
        p + "rope.dimension_count": spec.head_dim,
    }


def _value_type(key: str, value: Any) -> tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]:
    T = gguf.GGUFValueType
    scalar = {bool: T.BOOL, int: T.UINT32, float: T.FLOAT32, str: T.STRING}
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) > 1:
            raise ValueError(f"metadata {key} mixes {sorted(k.__name__ for k in kinds)}")
        sub = scalar.get(kinds.pop(), None) if kinds else T.STRING
        if sub is None:
            raise ValueError(f"metadata {key}: cannot write a list of {type(value[0]).__name__}")
        return T.ARRAY, T.INT32 if sub is T.UINT32 else sub
    if type(value) not in scalar:
        raise ValueError(f"metadata {key}: cannot write a {type(value).__name__}")
    return scalar[type(value)], None


def _quant_type(quant: str) -> gguf.GGMLQuantizationType:
    try:
        return gguf.GGMLQuantizationType[quant]
    except KeyError:
        raise ValueError(f"unknown GGML type {quant!r}") from None


def write_llama(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, Any],
    quant: str = "F32",
) -> None:
    """Write a GGUF: float32 matrices stored as `quant` (vectors stay F32, as llama.cpp does).

    Arrays of another dtype (float16, float64, int32, ...) are stored as that type unchanged.
    `metadata` holds every key but general.architecture (default llama), plain Python values:
    int becomes UINT32, float FLOAT32, lists of ints INT32 arrays.
    """
    qtype = _quant_type(quant)
    meta = dict(metadata)
    writer = gguf.GGUFWriter(path, arch=meta.pop("general.architecture", ARCH))
    try:
        for key, value in meta.items():
            vtype, sub = _value_type(key, value)
            writer.add_key_value(key, value, vtype, sub)
        for name, w in tensors.items():
            w = np.asarray(w)
            if w.dtype != np.float32 or w.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, np.ascontiguousarray(w))
                continue
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            if w.shape[-1] % block:
                raise ValueError(
                    f"{name}: rows of {w.shape[-1]} are not whole {quant} blocks of {block}"
                )
            try:
                data = gguf.quants.quantize(w, qtype)
            except NotImplementedError:
                raise ValueError(f"gguf.quants cannot quantize to {quant}") from None
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def write_tiny_llama(
    path: str | os.PathLike, spec: LlamaSpec, seed: int, quant: str = "F32"
) -> dict[str, np.ndarray]:
    """Write a random llama GGUF with a tiny byte-level BPE vocabulary; return its tensors."""
    tensors = random_llama(spec, seed)
    write_llama(path, tensors, llama_metadata(spec) | tiny_vocabulary(spec.vocab_size), quant)
    return tensors


# A random llama small enough for the test suite: what an experiment's "tiny" argument loads in
# place of a real model (its tiny vocabulary spells most words out, so the context is long).
TINY = LlamaSpec(
    vocab_size=400,
    num_layers=2,
    d_model=32,
    num_heads=2,
    num_kv_heads=1,
    mlp_width=64,
    rope_base=10000.0,
    norm_eps=1e-5,
    context_length=2048,
    head_dim=16,
    tied=True,
)


def tiny_llama_file(folder: str | os.PathLike, seed: int = 0) -> str:
    """The path of the TINY random llama (drawn with `seed`) in `folder`, written there once
    (a temp file, then renamed: a reader never sees half a file); deterministic under `seed`."""
    path = Path(folder) / f"tiny-llama-{seed}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            write_tiny_llama(part, TINY, seed)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    return str(path)
