"""Llama-architecture GGUF files read, dequantized to float32 (small random ones are written by
gguf_write).

The header is parsed here (the `gguf` package's reader takes seconds over a 49k-token vocabulary);
the `gguf` package supplies the type tables, `gguf.quants.dequantize` and the writer. Every array
comes back in numpy row-major orientation: the GGUF shape reversed, so a projection is (output
features, input features) like a PyTorch Linear weight and `token_embd.weight` is (vocab, d_model).

The rows of `attn_q` and `attn_k` are returned AS STORED: converters to GGUF permute them so that
llama.cpp's rotary, which rotates adjacent pairs of features (2i, 2i + 1) within each head,
reproduces a model trained with the "rotate half" rotary, which pairs features (i, i + h / 2) for
head size h. Stored row 2i of a head is the original row i, stored row 2i + 1 the original row
i + h / 2. A model either rotates adjacent pairs, or first puts the rows back
(continual.models.llama_weights.unpermute_rope does).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

ARCH = "llama"
_MAGIC = b"GGUF"
# llama.cpp's token types (tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# SmolLM2's first 17 tokens, all CONTROL; the tiny vocabulary written here starts with them too.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)


@dataclass(frozen=True)
class LlamaSpec:
    """The shape of a Llama decoder (RMSNorm, rotary, grouped-query attention, SwiGLU)."""

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    mlp_width: int
    rope_base: float
    norm_eps: float
    context_length: int
    head_dim: int
    tied: bool

    def __post_init__(self):
        ints = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_width")
        for name in (*ints, "context_length", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaSpec.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaSpec: {self.num_heads} query heads are not a multiple of "
                f"{self.num_kv_heads} key/value heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaSpec.head_dim must be even for rotary, got {self.head_dim}")
        for name in ("rope_base", "norm_eps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"LlamaSpec.{name} must be a positive number, got {value!r}")
        if not isinstance(self.tied, bool):
            raise ValueError(f"LlamaSpec.tied must be a bool, got {self.tied!r}")


SMOLLM2_135M = LlamaSpec(
    vocab_size=49152,
    num_layers=30,
    d_model=576,
    num_heads=9,
    num_kv_heads=3,
    mlp_width=1536,
    rope_base=100000.0,
    norm_eps=1e-5,
    context_length=8192,
    head_dim=64,
    tied=True,
)


def check_smollm2(spec: LlamaSpec) -> None:
    """Refuse, in one line, a spec that is not SmolLM2-135M's architecture (context aside)."""
    want = asdict(SMOLLM2_135M)
    got = asdict(spec)
    wrong = [
        f"{k} {got[k]!r} (want {v!r})"
        for k, v in want.items()
        if k != "context_length"
        and not (got[k] == v or (isinstance(v, float) and math.isclose(got[k], v, rel_tol=1e-6)))
    ]
    if wrong:
        raise ValueError("not SmolLM2-135M's architecture: " + ", ".join(wrong))


def expected_shapes(spec: LlamaSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a llama GGUF for `spec`, by GGUF name, with its numpy shape."""
    d, ff = spec.d_model, spec.mlp_width
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (spec.vocab_size, d)}
    for i in range(spec.num_layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (d,),
            b + "attn_q.weight": (q, d),
            b + "attn_k.weight": (kv, d),
            b + "attn_v.weight": (kv, d),
            b + "attn_output.weight": (d, q),
            b + "ffn_norm.weight": (d,),
            b + "ffn_gate.weight": (ff, d),
            b + "ffn_up.weight": (ff, d),
            b + "ffn_down.weight": (d, ff),
        }
    shapes["output_norm.weight"] = (d,)
    if not spec.tied:
        shapes["output.weight"] = (spec.vocab_size, d)
    return shapes


# ---------------------------------------------------------------------------------------------
# Reading


@functools.cache
def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether gguf.quants.dequantize handles `qtype` (probed on one zero block)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


_VT = gguf.GGUFValueType
_SCALARS = {  # value type -> (struct format, size)
    _VT.UINT8: ("<B", 1),
    _VT.INT8: ("<b", 1),
    _VT.UINT16: ("<H", 2),
    _VT.INT16: ("<h", 2),
    _VT.UINT32: ("<I", 4),
    _VT.INT32: ("<i", 4),
    _VT.FLOAT32: ("<f", 4),
    _VT.BOOL: ("<?", 1),
    _VT.UINT64: ("<Q", 8),
    _VT.INT64: ("<q", 8),
    _VT.FLOAT64: ("<d", 8),
}
_ARRAYS = {t: np.dtype(f) for t, (f, _) in _SCALARS.items()}


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: the GGUF dims reversed
    qtype: gguf.GGMLQuantizationType
    start: int  # absolute byte offset in the file
    nbytes: int


class _Header:
    """GGUF v2/v3 header parsed straight from bytes (the gguf package's reader builds a numpy view
    per string, which takes seconds for a 49k-token vocabulary); no tensor data is read."""

    def __init__(self, path: Path):
        self.path, self.pos = path, 4
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
            if magic != _MAGIC:
                raise ValueError(f"{path}: not a GGUF file (starts with {magic!r})")
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(path, size)
        finally:
            self.buf.close()

    def _parse(self, path: Path, size: int) -> None:
        version = self._scalar(_VT.UINT32)
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version} (want 2 or 3)")
        n_tensors, n_kv = self._scalar(_VT.UINT64), self._scalar(_VT.UINT64)
        if n_tensors > size or n_kv > size:
            raise ValueError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        self.fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            if key in self.fields:
                raise ValueError(f"{path}: corrupt GGUF header (key {key} twice)")
            self.fields[key] = self._value(self._type())
        raw = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar(_VT.UINT32)
            if not 1 <= n_dims <= 4:
                raise ValueError(f"{path}: corrupt GGUF header (tensor {name} has {n_dims} dims)")
            dims = [self._scalar(_VT.UINT64) for _ in range(n_dims)]
            code, offset = self._scalar(_VT.UINT32), self._scalar(_VT.UINT64)
            raw.append((name, dims, code, offset))
        align = self.fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"{path}: corrupt GGUF header (alignment {align!r})")
        data_start = -(-self.pos // align) * align
        self.tensors: dict[str, _TensorInfo] = {}
        for name, dims, code, offset in raw:
            try:
                qtype = gguf.GGMLQuantizationType(code)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {name} has unknown type code {code}") from None
            if name in self.tensors or dims[0] % block or offset % align:
                raise ValueError(f"{path}: corrupt GGUF header (tensor {name})")
            nbytes = math.prod(dims) // block * type_size
            start = data_start + offset
            if start + nbytes > size:
                raise ValueError(f"{path}: truncated GGUF file (tensor {name} runs past the end)")
            self.tensors[name] = _TensorInfo(name, tuple(reversed(dims)), qtype, start, nbytes)

    def _take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise ValueError(f"{self.path}: truncated or corrupt GGUF header (at byte {self.pos})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def _scalar(self, vtype: gguf.GGUFValueType) -> Any:
        fmt, n = _SCALARS[vtype]
        if n > len(self.buf) - self.pos:
            raise ValueError(f"{self.path}: truncated or corrupt GGUF header (at byte {self.pos})")
        self.pos += n
        return struct.unpack_from(fmt, self.buf, self.pos - n)[0]

    def _type(self) -> gguf.GGUFValueType:
        code = self._scalar(_VT.UINT32)
        try:
            return _VT(code)
        except ValueError:
            raise ValueError(f"{self.path}: corrupt GGUF header (value type {code})") from None

    def _string(self) -> str:
        raw = self._take(self._scalar(_VT.UINT64))
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: corrupt GGUF header (a string is not UTF-8)") from None

    def _value(self, vtype: gguf.GGUFValueType) -> Any:
        if vtype == _VT.STRING:
            return self._string()
        if vtype != _VT.ARRAY:
            value = self._scalar(vtype)
            return _f32(value) if vtype == _VT.FLOAT32 else value
        sub, count = self._type(), self._scalar(_VT.UINT64)
        if sub in _ARRAYS:
            values = np.frombuffer(self._take(count * _ARRAYS[sub].itemsize), _ARRAYS[sub])
            return [_f32(v) for v in values.tolist()] if sub == _VT.FLOAT32 else values.tolist()
        if count > len(self.buf) - self.pos:
            raise ValueError(f"{self.path}: truncated or corrupt GGUF header (array of {count})")
        return [self._value(sub) for _ in range(count)]


def _f32(v: float) -> float:
    """A float32 as its shortest decimal: 1e-05, not 9.999999747378752e-06."""
    return float(str(np.float32(v)))


def _get(fields: dict, key: str, kind: type, path: Path, default: Any = ...) -> Any:
    if key not in fields:
        if default is ...:
            raise ValueError(f"{path}: missing metadata field {key}")
        return default
    value = fields[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{path}: metadata field {key} is {value!r:.60}, not a {kind.__name__}")
    return float(value) if kind is float else value


def _spec(fields: dict, tensor_names: set[str], path: Path) -> LlamaSpec:
    arch = _get(fields, "general.architecture", str, path)
    if arch != ARCH:
        raise ValueError(f"{path}: architecture {arch!r} is not {ARCH!r}")
    p = f"{ARCH}."
    if _get(fields, p + "expert_count", int, path, 0) > 0:
        raise ValueError(f"{path}: a mixture-of-experts llama is not supported")
    scaling = _get(fields, p + "rope.scaling.type", str, path, "none")
    if scaling != "none":
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported")
    d_model = _get(fields, p + "embedding_length", int, path)
    num_heads = _get(fields, p + "attention.head_count", int, path)
    if d_model % num_heads:
        raise ValueError(
            f"{path}: embedding_length {d_model} is not a multiple of {num_heads} heads"
        )
    head_dim = _get(fields, p + "attention.key_length", int, path, d_model // num_heads)
    value_dim = _get(fields, p + "attention.value_length", int, path, head_dim)
    rotary_dim = _get(fields, p + "rope.dimension_count", int, path, head_dim)
    if value_dim != head_dim or rotary_dim != head_dim:
        raise ValueError(
            f"{path}: key/value/rotary dims {head_dim}/{value_dim}/{rotary_dim} differ "
            "(only full rotary over equal key and value heads is supported)"
        )
    tokens = _get(fields, "tokenizer.ggml.tokens", list, path)
    vocab_size = _get(fields, p + "vocab_size", int, path, len(tokens))
    if vocab_size != len(tokens):
        raise ValueError(f"{path}: vocab_size {vocab_size} but {len(tokens)} tokens")
    try:
        return LlamaSpec(
            vocab_size=vocab_size,
            num_layers=_get(fields, p + "block_count", int, path),
            d_model=d_model,
            num_heads=num_heads,
            num_kv_heads=_get(fields, p + "attention.head_count_kv", int, path, num_heads),
            mlp_width=_get(fields, p + "feed_forward_length", int, path),
            # llama.cpp's default when a file omits the rotary base
            rope_base=_get(fields, p + "rope.freq_base", float, path, 10000.0),
            norm_eps=_get(fields, p + "attention.layer_norm_rms_epsilon", float, path),
            context_length=_get(fields, p + "context_length", int, path),
            head_dim=head_dim,
            tied="output.weight" not in tensor_names,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _header(path: str | os.PathLike) -> _Header:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    return _Header(path)


def read_tokenizer_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Only the tokenizer.* metadata of a GGUF, as plain Python values (no tensor is read)."""
    header = _header(path)
    meta = {k: v for k, v in header.fields.items() if k.startswith("tokenizer.")}
    _get(meta, "tokenizer.ggml.model", str, header.path)
    _get(meta, "tokenizer.ggml.tokens", list, header.path)
    return meta


def read_llama(path: str | os.PathLike) -> tuple[LlamaSpec, dict[str, np.ndarray], dict[str, Any]]:
    """(spec, float32 tensors by GGUF name, tokenizer.* metadata); Q/K rows as stored (see top)."""
    header = _header(path)
    path, fields, stored = header.path, header.fields, header.tensors
    _get(fields, "tokenizer.ggml.model", str, path)
    spec = _spec(fields, set(stored), path)
    shapes = expected_shapes(spec)
    for name in shapes:
        if name not in stored:
            raise ValueError(f"{path}: missing tensor {name}")
    for name, t in stored.items():
        if name not in shapes:
            raise ValueError(f"{path}: unexpected tensor {name} (not a plain llama model)")
        if t.shape != shapes[name]:
            raise ValueError(
                f"{path}: tensor {name} has shape {t.shape}, the spec wants {shapes[name]}"
            )
        if not _dequantizable(t.qtype):
            raise ValueError(f"{path}: tensor {name} has unsupported type {t.qtype.name}")
    data = np.memmap(path, np.uint8, mode="r")
    try:
        tensors = {}
        for name, t in stored.items():
            raw = data[t.start : t.start + t.nbytes]
            raw = raw.reshape(gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype))
            w = np.array(gguf.quants.dequantize(raw, t.qtype), dtype=np.float32).reshape(t.shape)
            if not np.isfinite(w).all():
                raise ValueError(f"{path}: tensor {name} holds non-finite values")
            tensors[name] = w
    finally:
        del data
    meta = {k: v for k, v in fields.items() if k.startswith("tokenizer.")}
    return spec, tensors, meta


# ---------------------------------------------------------------------------------------------
@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (a space becomes 'Ġ')."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table
