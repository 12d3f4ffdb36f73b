"""A Llama-architecture checkpoint, as GGUF names its tensors, mapped onto `Transformer` params.

GGUF keeps a linear layer's weight as (output features, input features), as PyTorch does; a Flax
kernel is (input features, output features), so every matrix is transposed and its head axes
split out. The rows of `attn_q` and `attn_k` come permuted: converters to GGUF interleave the two
rotary halves of every head for llama.cpp's rotary layout, and `unpermute_rope` puts them back in
the rotate-half order `Transformer` uses. Only the mapping lives here; reading the file is
`continual.data.gguf`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from continual.models.transformer import Transformer


def unpermute_rope(w_RxD: np.ndarray, heads: int) -> np.ndarray:
    """The rows of a GGUF `attn_q` / `attn_k` weight (heads x K rows) in rotate-half order.

    Within each head a GGUF file holds at row 2i + a what the original model holds at row
    a * K/2 + i (a in {0, 1}, i < K/2): the halves [x_0..x_{K/2-1} | x_{K/2}..x_{K-1}] were
    interleaved into pairs (x_i, x_{i+K/2}). Reading each head's rows as (K/2, 2) and transposing
    to (2, K/2) inverts it.
    """
    rows, d = w_RxD.shape
    k = rows // heads
    if heads < 1 or rows != heads * k or k % 2:
        raise ValueError(f"{rows} rows are not {heads} heads of an even width")
    return w_RxD.reshape(heads, k // 2, 2, d).swapaxes(1, 2).reshape(rows, d)


def _names(num_layers: int, tied: bool) -> set[str]:
    per_block = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")
    per_block += ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    names = {f"blk.{i}.{n}.weight" for i in range(num_layers) for n in per_block}
    names |= {"token_embd.weight", "output_norm.weight"}
    return names if tied else names | {"output.weight"}


def params_from_gguf(spec, tensors: dict, *, context: int | None = None, dtype=jnp.float32):
    """(model, params): the `Transformer` that `spec` describes and `tensors` as its params.

    `spec` has vocab_size, num_layers, d_model, num_heads, num_kv_heads, mlp_width, rope_base,
    norm_eps, context_length, head_dim and tied; `tensors` maps GGUF tensor names to float32
    arrays. `context` (at most the checkpoint's context_length; default that or 2048, whichever
    is less) sizes the model and its KV cache; `dtype` is the compute dtype (params stay float32).
    """
    context = min(spec.context_length, 2048) if context is None else context
    if not 1 <= context <= spec.context_length:
        raise ValueError(f"context {context} must be in [1, {spec.context_length}]")
    model = Transformer(
        vocab_size=spec.vocab_size,
        num_layers=spec.num_layers,
        d_model=spec.d_model,
        num_heads=spec.num_heads,
        context=context,
        tied=spec.tied,
        dtype=dtype,
        num_kv_heads=spec.num_kv_heads,
        mlp="swiglu",
        mlp_width=spec.mlp_width,
        rope_base=float(spec.rope_base),
        norm_eps=float(spec.norm_eps),
        head_dim=spec.head_dim,
    )
    expected = _names(spec.num_layers, spec.tied)
    if missing := sorted(expected - set(tensors)):
        raise ValueError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
    if extra := sorted(set(tensors) - expected):
        raise ValueError(f"the checkpoint has tensors this model does not use: {extra[:3]}")
    d, h, g, k = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
    f, v = spec.mlp_width, spec.vocab_size

    def get(name: str, *shape: int) -> np.ndarray:
        w = np.asarray(tensors[name], np.float32)
        if w.shape != shape:
            raise ValueError(f"{name} has shape {w.shape}, expected {shape}")
        return w

    params = {"embed": {"embedding": get("token_embd.weight", v, d)}}
    for i in range(spec.num_layers):
        t = f"blk.{i}."
        q_DxHxK = unpermute_rope(get(t + "attn_q.weight", h * k, d), h).T.reshape(d, h, k)
        k_DxGxK = unpermute_rope(get(t + "attn_k.weight", g * k, d), g).T.reshape(d, g, k)
        v_DxGxK = get(t + "attn_v.weight", g * k, d).T.reshape(d, g, k)
        qkv = (q_DxHxK, k_DxGxK, v_DxGxK)
        if g == h:  # the layout of multi-head attention: one fused projection
            attn = {"qkv": {"kernel": np.stack(qkv, 1)}}
        else:
            attn = {
                n: {"kernel": w} for n, w in zip(("attn_q", "attn_k", "attn_v"), qkv, strict=True)
            }
        params[f"blocks_{i}"] = {
            "attn_norm": {"scale": get(t + "attn_norm.weight", d)},
            **attn,
            "attn_out": {"kernel": get(t + "attn_output.weight", d, h * k).T.reshape(h, k, d)},
            "mlp_norm": {"scale": get(t + "ffn_norm.weight", d)},
            "mlp_gate": {"kernel": get(t + "ffn_gate.weight", f, d).T},
            "mlp_up": {"kernel": get(t + "ffn_up.weight", f, d).T},
            "mlp_down": {"kernel": get(t + "ffn_down.weight", d, f).T},
        }
    params["final_norm"] = {"scale": get("output_norm.weight", d)}
    if not spec.tied:
        params["head"] = {"kernel": get("output.weight", v, d).T}
    return model, {"params": jax.tree.map(jnp.asarray, params)}
