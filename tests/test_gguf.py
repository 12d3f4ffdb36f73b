"""GGUF files: a tiny random llama written and read back, and every refusal in one line."""

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest

from continual.data.gguf import (
    SMOLLM2_135M,
    SPECIAL_TOKENS,
    LlamaSpec,
    check_smollm2,
    expected_shapes,
    read_llama,
    read_tokenizer_metadata,
)
from continual.data.gguf_write import (
    llama_metadata,
    random_llama,
    tiny_vocabulary,
    write_llama,
    write_tiny_llama,
)

SPEC = LlamaSpec(
    vocab_size=300,
    num_layers=2,
    d_model=64,
    num_heads=4,
    num_kv_heads=2,
    mlp_width=96,
    rope_base=10000.0,
    norm_eps=1e-5,
    context_length=128,
    head_dim=16,
    tied=True,
)


def refused(fn, *args, match: str, error=ValueError) -> str:
    with pytest.raises(error, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_llama(path, SPEC, seed=0)


def write(path, tensors=None, drop=(), quant="F32", **meta):
    """A tiny model with some tensors or metadata replaced (None removes a key)."""
    tensors = dict(random_llama(SPEC, 0) if tensors is None else tensors)
    metadata = llama_metadata(SPEC) | tiny_vocabulary(SPEC.vocab_size)
    for key, value in meta.items():
        key = key.replace("__", ".")
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    for name in drop:
        tensors.pop(name)
    write_llama(path, tensors, metadata, quant)
    return path


def test_f32_round_trip_is_exact(tiny):
    path, written = tiny
    spec, tensors, meta = read_llama(path)
    assert spec == SPEC
    assert tensors.keys() == written.keys() == expected_shapes(SPEC).keys()
    for name, w in written.items():
        assert tensors[name].dtype == np.float32 and tensors[name].flags.c_contiguous
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)
    # numpy orientation: (output features, input features); the GGUF lists dims the other way
    assert tensors["blk.0.attn_q.weight"].shape == (64, 64)
    assert tensors["blk.0.attn_k.weight"].shape == (32, 64)
    assert tensors["blk.1.ffn_down.weight"].shape == (64, 96)
    assert tensors["token_embd.weight"].shape == (300, 64)
    assert "output.weight" not in tensors
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert stored["blk.0.attn_k.weight"].shape.tolist() == [64, 32]
    assert meta == tiny_vocabulary(SPEC.vocab_size)
    assert meta["tokenizer.ggml.tokens"][: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert read_tokenizer_metadata(path) == meta


def test_untied_model_has_its_own_head(tmp_path):
    spec = dataclasses.replace(SPEC, tied=False)
    written = write_tiny_llama(tmp_path / "untied.gguf", spec, seed=3)
    got, tensors, _ = read_llama(tmp_path / "untied.gguf")
    assert got == spec and tensors["output.weight"].shape == (300, 64)
    np.testing.assert_array_equal(tensors["output.weight"], written["output.weight"])


def test_writing_is_deterministic_under_the_seed(tmp_path):
    a = write_tiny_llama(tmp_path / "a.gguf", SPEC, seed=7)
    write_tiny_llama(tmp_path / "b.gguf", SPEC, seed=7)
    c = write_tiny_llama(tmp_path / "c.gguf", SPEC, seed=8)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert not np.array_equal(a["blk.0.attn_q.weight"], c["blk.0.attn_q.weight"])


# Worst error per block of 32 values, as a multiple of the block's largest magnitude (Q4_1: its
# range): half a step, but a whole one for Q4_0, whose 16 levels clip one end; plus the rounding of
# the float16 block scale (and minimum).
_WORST = {"Q8_0": 0.5 / 127, "Q4_0": 1 / 8, "Q4_1": 0.5 / 15}


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"])
def test_quantized_round_trip_is_within_quantization_error(tmp_path, quant):
    path = tmp_path / f"{quant}.gguf"
    written = write_tiny_llama(path, SPEC, seed=1, quant=quant)
    _, tensors, _ = read_llama(path)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    for name, w in written.items():
        got = tensors[name]
        if w.ndim == 1:  # norms stay F32, as llama.cpp writes them
            assert types[name] == "F32"
            np.testing.assert_array_equal(got, w)
            continue
        assert types[name] == quant
        err = np.abs(got - w)
        assert err.max() > 0, name
        if quant in ("F16", "BF16"):
            rel = 2.0**-11 if quant == "F16" else 2.0**-8
            assert np.all(err <= rel * np.abs(w) + 1e-7), name
            continue
        blocks, err = w.reshape(-1, 32), err.reshape(-1, 32)
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        span = blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)
        scale = span if quant == "Q4_1" else amax
        assert np.all(err <= _WORST[quant] * scale + amax * 2.0**-9), name


def test_our_header_parser_agrees_with_gguf_reader(tmp_path):
    path = tmp_path / "q.gguf"
    write_tiny_llama(path, dataclasses.replace(SPEC, tied=False), seed=2, quant="Q8_0")
    _, tensors, meta = read_llama(path)
    reader = gguf.GGUFReader(path)
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            assert meta[name] == field.contents(), name
    assert {t.name for t in reader.tensors} == tensors.keys()
    for t in reader.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(tensors[t.name], want, err_msg=t.name)


# --- refusals --------------------------------------------------------------------------------


def test_refuses_a_missing_file(tmp_path):
    refused(read_llama, tmp_path / "nope.gguf", match="is not a file", error=FileNotFoundError)


@pytest.mark.parametrize("data", [b"", b"GG", b"PK\x03\x04 not a gguf", b"\x00" * 64])
def test_refuses_what_is_not_a_gguf(tmp_path, data):
    (tmp_path / "x.gguf").write_bytes(data)
    refused(read_llama, tmp_path / "x.gguf", match="not a GGUF file")


@pytest.mark.parametrize("keep", [4, 6, 20, 100, 3000, 0.5, -1])
def test_refuses_a_truncated_file(tiny, tmp_path, keep):
    data = tiny[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    refused(read_llama, cut, match="truncated")


@pytest.mark.parametrize(
    ("offset", "match"),
    [
        (0, "not a GGUF file"),
        (4, "unsupported GGUF version"),
        (15, "corrupt GGUF header"),  # tensor count
        (23, "corrupt GGUF header"),  # key/value count
        (31, "truncated or corrupt GGUF header"),  # length of the first key
        (52, "corrupt GGUF header"),  # type of the first value
        (64, "not UTF-8"),  # the architecture's name
    ],
)
def test_refuses_flipped_header_bytes(tiny, tmp_path, offset, match):
    data = bytearray(tiny[0].read_bytes())
    assert data[32:52] == b"general.architecture"
    data[offset] ^= 0xFF
    (tmp_path / "flip.gguf").write_bytes(bytes(data))
    refused(read_llama, tmp_path / "flip.gguf", match=match)


def test_flipped_header_bytes_never_raise_anything_but_a_one_line_value_error(tiny, tmp_path):
    data = tiny[0].read_bytes()
    header_end = min(t.data_offset for t in gguf.GGUFReader(tiny[0]).tensors)
    rng = np.random.default_rng(0)
    for offset in rng.choice(header_end, size=300, replace=False):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << int(rng.integers(8))
        (tmp_path / "f.gguf").write_bytes(bytes(flipped))
        try:
            read_llama(tmp_path / "f.gguf")
        except ValueError as e:
            assert str(e) and "\n" not in str(e), (offset, str(e))


def test_refuses_another_architecture(tmp_path):
    write(tmp_path / "x.gguf", general__architecture="gpt2")
    refused(read_llama, tmp_path / "x.gguf", match="architecture 'gpt2' is not 'llama'")


@pytest.mark.parametrize(
    "key",
    [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.context_length",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
    ],
)
def test_refuses_a_missing_metadata_field(tmp_path, key):
    write(tmp_path / "x.gguf", **{key.replace(".", "__"): None})
    refused(read_llama, tmp_path / "x.gguf", match=f"missing metadata field {key}")


def test_optional_fields_take_llama_cpp_defaults(tmp_path):
    write(
        tmp_path / "x.gguf",
        llama__attention__head_count_kv=None,
        llama__rope__freq_base=None,
        llama__rope__dimension_count=None,
        llama__vocab_size=None,
        tensors=random_llama(dataclasses.replace(SPEC, num_kv_heads=4), 0),
    )
    spec, _, _ = read_llama(tmp_path / "x.gguf")
    assert spec == dataclasses.replace(SPEC, num_kv_heads=4, rope_base=10000.0)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"llama__block_count": "two"}, "is 'two', not a int"),
        ({"llama__attention__layer_norm_rms_epsilon": "x"}, "not a float"),
        ({"llama__vocab_size": 301}, "vocab_size 301 but 300 tokens"),
        ({"llama__rope__scaling__type": "linear"}, "rope scaling 'linear' is not supported"),
        ({"llama__expert_count": 8}, "mixture-of-experts"),
        ({"llama__rope__dimension_count": 8}, "dims 16/16/8 differ"),
        ({"llama__attention__head_count": 5}, "not a multiple of 5 heads"),
        ({"llama__attention__head_count_kv": 3}, "not a multiple of 3 key/value heads"),
        ({"llama__attention__head_count_kv": 1}, r"attn_k.weight has shape \(32, 64\)"),
        ({"llama__feed_forward_length": 95}, r"ffn_gate.weight has shape \(96, 64\)"),
        ({"llama__block_count": 1}, "unexpected tensor blk.1."),
        ({"llama__block_count": 3}, "missing tensor blk.2.attn_norm.weight"),
    ],
)
def test_refuses_inconsistent_metadata(tmp_path, meta, match):
    write(tmp_path / "x.gguf", **meta)
    refused(read_llama, tmp_path / "x.gguf", match=match)


def test_refuses_a_missing_or_unexpected_tensor(tmp_path):
    write(tmp_path / "a.gguf", drop=["blk.1.ffn_up.weight"])
    refused(read_llama, tmp_path / "a.gguf", match="missing tensor blk.1.ffn_up.weight")
    tensors = random_llama(SPEC, 0) | {"rope_freqs.weight": np.ones(8, np.float32)}
    write(tmp_path / "b.gguf", tensors=tensors)
    refused(read_llama, tmp_path / "b.gguf", match="unexpected tensor rope_freqs.weight")


def test_refuses_a_tensor_of_the_wrong_shape(tmp_path):
    tensors = random_llama(SPEC, 0)
    tensors["blk.0.attn_k.weight"] = tensors["blk.0.attn_k.weight"].T.copy()
    write(tmp_path / "x.gguf", tensors=tensors)
    refused(read_llama, tmp_path / "x.gguf", match=r"blk.0.attn_k.weight has shape \(64, 32\)")


@pytest.mark.parametrize(("dtype", "name"), [(np.float64, "F64"), (np.int32, "I32")])
def test_refuses_an_unsupported_tensor_type_by_name(tmp_path, dtype, name):
    tensors = random_llama(SPEC, 0)
    tensors["blk.1.ffn_norm.weight"] = tensors["blk.1.ffn_norm.weight"].astype(dtype)
    write(tmp_path / "x.gguf", tensors=tensors)
    refused(read_llama, tmp_path / "x.gguf", match=f"ffn_norm.weight has unsupported type {name}")


def test_refuses_non_finite_weights(tmp_path):
    tensors = random_llama(SPEC, 0)
    tensors["output_norm.weight"][3] = np.nan
    write(tmp_path / "x.gguf", tensors=tensors)
    refused(read_llama, tmp_path / "x.gguf", match="output_norm.weight holds non-finite values")


def test_writer_refusals(tmp_path):
    refused(write_tiny_llama, tmp_path / "x", SPEC, 0, "Q9_9", match="unknown GGML type")
    spec = dataclasses.replace(SPEC, d_model=48, num_heads=3, num_kv_heads=1)
    refused(write_tiny_llama, tmp_path / "x", spec, 0, "Q8_0", match="not whole Q8_0 blocks")
    refused(tiny_vocabulary, 100, match="at least 273 tokens")


# --- specs -----------------------------------------------------------------------------------


def test_check_smollm2_accepts_only_smollm2():
    check_smollm2(SMOLLM2_135M)
    check_smollm2(dataclasses.replace(SMOLLM2_135M, context_length=2048, norm_eps=1e-5 + 1e-12))
    message = refused(check_smollm2, SPEC, match="not SmolLM2-135M's architecture")
    assert "num_layers 2 (want 30)" in message and "d_model 64 (want 576)" in message
    for change in [
        {"vocab_size": 49153},
        {"num_layers": 29},
        {"d_model": 640, "num_heads": 10, "num_kv_heads": 5},
        {"num_kv_heads": 9},
        {"mlp_width": 1024},
        {"rope_base": 10000.0},
        {"norm_eps": 1e-6},
        {"head_dim": 32},
        {"tied": False},
    ]:
        spec = dataclasses.replace(SMOLLM2_135M, **change)
        message = refused(check_smollm2, spec, match="not SmolLM2-135M's architecture")
        assert all(f"{k} {v!r}" in message for k, v in change.items()), message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_kv_heads": 3}, "not a multiple of 3 key/value heads"),
        ({"head_dim": 15}, "head_dim must be even"),
        ({"num_layers": 0}, "num_layers must be a positive int"),
        ({"d_model": 64.0}, "d_model must be a positive int"),
        ({"norm_eps": -1.0}, "norm_eps must be a positive number"),
        ({"tied": 1}, "tied must be a bool"),
    ],
)
def test_spec_validation(change, match):
    with pytest.raises(ValueError, match=match) as info:
        dataclasses.replace(SPEC, **change)
    assert "\n" not in str(info.value)
