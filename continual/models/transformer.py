"""Decoder-only transformer language model in the Llama layout: pre-norm (RMSNorm), rotary
positions, causal grouped-query attention, a GELU or SwiGLU MLP, a tied or untied output head.

The character LM and a pretrained Llama-architecture model (SmolLM2-135M, mapped by
`continual.models.llama_weights`) are configurations of this one module. The defaults are the
character LM: every head has its own key and value, projected with the queries by one fused `qkv`
layer, and the MLP is Dense + GELU + Dense with biases. `num_kv_heads < num_heads` gives separate
`attn_q`, `attn_k`, `attn_v` layers (k and v with G heads, as a Llama checkpoint stores them);
`mlp="swiglu"` gives Llama's bias-free `mlp_down(silu(mlp_gate(x)) * mlp_up(x))`.

One module serves both paths on the same params: `model.apply(params, tokens_BxL)` gives the
logits of every position; `decode_step(model, params, cache, token_B, pos)` feeds one token per
example at position `pos` and reads the keys and values of earlier positions from a KV cache
(`init_cache`) that holds the G key/value heads only. Shape suffixes: B batch, L positions, S cache
positions, D model width, H query heads, G key/value heads, R = H / G query heads per key/value
head, K head width, J = K / 2 rotary frequencies, F MLP width, V vocabulary, N layers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

MASKED = -1e9  # attention logit of a position a query may not see
MLPS = ("gelu", "swiglu")


class KVCache(NamedTuple):
    """Keys and values of every layer at every cache position (zeros where not yet written)."""

    k_NxBxSxGxK: jax.Array
    v_NxBxSxGxK: jax.Array


def _rope(x_BxLxHxK: jax.Array, pos_L: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding: rotates pairs (i, i + K/2) by angle pos * base^(-2i/K)."""
    half = x_BxLxHxK.shape[-1] // 2
    freq_J = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_LxJ = pos_L.astype(jnp.float32)[:, None] * freq_J[None, :]
    cos_1xLx1xJ = jnp.cos(angle_LxJ)[None, :, None, :]
    sin_1xLx1xJ = jnp.sin(angle_LxJ)[None, :, None, :]
    x1, x2 = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
    out = jnp.concatenate(
        [x1 * cos_1xLx1xJ - x2 * sin_1xLx1xJ, x2 * cos_1xLx1xJ + x1 * sin_1xLx1xJ], -1
    )
    return out.astype(x_BxLxHxK.dtype)


def _attend(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_LxS) -> jax.Array:
    """Softmax attention of L queries over S keys where `mask_LxS` allows (softmax in fp32).

    Query head h reads key/value head h // R. The R query heads of a group become R query rows of
    its key/value head (M = L * R rows), so keys and values are never repeated, and with G = H
    (R = 1) this is multi-head attention op for op.
    """
    b, l, h, k = q_BxLxHxK.shape
    g = k_BxSxGxK.shape[2]
    r = h // g
    q_BxMxGxK = q_BxLxHxK.reshape(b, l, g, r, k).swapaxes(2, 3).reshape(b, l * r, g, k)
    mask_MxS = jnp.repeat(mask_LxS, r, axis=0)
    s_BxGxMxS = jnp.einsum("bmgk,bsgk->bgms", q_BxMxGxK, k_BxSxGxK).astype(jnp.float32) * k**-0.5
    s_BxGxMxS = jnp.where(mask_MxS[None, None], s_BxGxMxS, MASKED)
    p_BxGxMxS = jax.nn.softmax(s_BxGxMxS, axis=-1).astype(v_BxSxGxK.dtype)
    a_BxMxGxK = jnp.einsum("bgms,bsgk->bmgk", p_BxGxMxS, v_BxSxGxK)
    return a_BxMxGxK.reshape(b, l, r, g, k).swapaxes(2, 3).reshape(b, l, h, k)


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x))."""

    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp: str
    mlp_width: int
    rope_base: float
    norm_eps: float
    dtype: Any

    def setup(self):
        h, g, k = self.num_heads, self.num_kv_heads, self.head_dim
        dense = {"use_bias": False, "dtype": self.dtype}
        self.attn_norm = nn.RMSNorm(self.norm_eps, dtype=self.dtype)
        if g == h:
            self.qkv = nn.DenseGeneral((3, h, k), **dense)
        else:
            self.attn_q = nn.DenseGeneral((h, k), **dense)
            self.attn_k = nn.DenseGeneral((g, k), **dense)
            self.attn_v = nn.DenseGeneral((g, k), **dense)
        self.attn_out = nn.DenseGeneral(self.d_model, axis=(-2, -1), **dense)
        self.mlp_norm = nn.RMSNorm(self.norm_eps, dtype=self.dtype)
        if self.mlp == "gelu":
            self.mlp_in = nn.Dense(self.mlp_width, dtype=self.dtype)
            self.mlp_out = nn.Dense(self.d_model, dtype=self.dtype)
        else:
            self.mlp_gate = nn.Dense(self.mlp_width, **dense)
            self.mlp_up = nn.Dense(self.mlp_width, **dense)
            self.mlp_down = nn.Dense(self.d_model, **dense)

    def _qkv(self, x_BxLxD, pos_L):
        h_BxLxD = self.attn_norm(x_BxLxD)
        if self.num_kv_heads == self.num_heads:
            qkv_BxLx3xHxK = self.qkv(h_BxLxD)
            q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
        else:
            q_BxLxHxK = self.attn_q(h_BxLxD)
            k_BxLxGxK, v_BxLxGxK = self.attn_k(h_BxLxD), self.attn_v(h_BxLxD)
        base = self.rope_base
        return _rope(q_BxLxHxK, pos_L, base), _rope(k_BxLxGxK, pos_L, base), v_BxLxGxK

    def _mlp(self, x_BxLxD):
        h_BxLxD = self.mlp_norm(x_BxLxD)
        if self.mlp == "gelu":
            return x_BxLxD + self.mlp_out(nn.gelu(self.mlp_in(h_BxLxD)))
        f_BxLxF = nn.silu(self.mlp_gate(h_BxLxD)) * self.mlp_up(h_BxLxD)
        return x_BxLxD + self.mlp_down(f_BxLxF)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        """The block applied to every position, each attending to itself and earlier ones."""
        pos_L = jnp.arange(x_BxLxD.shape[1])
        q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = self._qkv(x_BxLxD, pos_L)
        mask_LxL = pos_L[:, None] >= pos_L[None, :]
        a_BxLxHxK = _attend(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, mask_LxL)
        return self._mlp(x_BxLxD + self.attn_out(a_BxLxHxK))

    def decode(self, x_Bx1xD, pos, i: int, cache: KVCache):
        """(x, cache): position `pos` of every example, its key and value written to layer `i`."""
        q_Bx1xHxK, k_Bx1xGxK, v_Bx1xGxK = self._qkv(x_Bx1xD, pos[None])
        # written in place into the whole cache: stacking per-layer caches copied it every step
        k_NxBxSxGxK, v_NxBxSxGxK = cache
        at = (i, 0, pos, 0, 0)
        k_1xBx1xGxK = k_Bx1xGxK[None].astype(k_NxBxSxGxK.dtype)
        v_1xBx1xGxK = v_Bx1xGxK[None].astype(v_NxBxSxGxK.dtype)
        k_NxBxSxGxK = jax.lax.dynamic_update_slice(k_NxBxSxGxK, k_1xBx1xGxK, at)
        v_NxBxSxGxK = jax.lax.dynamic_update_slice(v_NxBxSxGxK, v_1xBx1xGxK, at)
        mask_1xS = (jnp.arange(k_NxBxSxGxK.shape[2]) <= pos)[None, :]
        a_Bx1xHxK = _attend(q_Bx1xHxK, k_NxBxSxGxK[i], v_NxBxSxGxK[i], mask_1xS)
        return self._mlp(x_Bx1xD + self.attn_out(a_Bx1xHxK)), KVCache(k_NxBxSxGxK, v_NxBxSxGxK)


class Transformer(nn.Module):
    """Token embedding, `num_layers` pre-norm blocks, final norm, output head (tied by default).

    `dtype` is the compute dtype (params stay fp32; bf16 is an option); logits are fp32.
    `num_kv_heads` (default num_heads), `head_dim` (default d_model // num_heads) and `mlp_width`
    (default mlp_ratio * d_model) default to the character LM's shapes; `norm_eps` is RMSNorm's.
    """

    vocab_size: int
    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    context: int = 128
    mlp_ratio: int = 4
    tied: bool = True
    dtype: Any = jnp.float32
    num_kv_heads: int | None = None
    mlp: str = "gelu"
    mlp_width: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-6  # flax's nn.RMSNorm default
    head_dim: int | None = None

    def __post_init__(self):
        """Checks the configuration: a bad one raises ValueError when the module is built."""
        _check(self)
        super().__post_init__()

    def setup(self):
        g, k, f = dims(self)
        init = nn.initializers.normal(0.02)
        self.embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init, dtype=self.dtype)
        self.blocks = [
            Block(
                self.d_model,
                self.num_heads,
                g,
                k,
                self.mlp,
                f,
                self.rope_base,
                self.norm_eps,
                self.dtype,
            )
            for _ in range(self.num_layers)
        ]
        self.final_norm = nn.RMSNorm(self.norm_eps, dtype=self.dtype)
        if not self.tied:
            self.head = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype)

    def _logits(self, x_BxLxD):
        x_BxLxD = self.final_norm(x_BxLxD)
        logits_BxLxV = self.embed.attend(x_BxLxD) if self.tied else self.head(x_BxLxD)
        return logits_BxLxV.astype(jnp.float32)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        """Next-token logits_BxLxV at every position of `tokens_BxL` (L <= context)."""
        if tokens_BxL.shape[1] > self.context:
            raise ValueError(f"{tokens_BxL.shape[1]} tokens exceed the context of {self.context}")
        x_BxLxD = self.embed(tokens_BxL)
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD)
        return self._logits(x_BxLxD)

    def decode(self, token_B: jax.Array, pos: jax.Array, cache: KVCache):
        """(logits_BxV, cache): next-token logits after `token_B` at position `pos`."""
        x_Bx1xD = self.embed(token_B[:, None])
        for i, block in enumerate(self.blocks):
            x_Bx1xD, cache = block.decode(x_Bx1xD, pos, i, cache)
        return self._logits(x_Bx1xD)[:, 0], cache


def dims(model: Transformer) -> tuple[int, int, int]:
    """(G, K, F): the model's key/value heads, head width and MLP width, defaults resolved."""
    g = model.num_heads if model.num_kv_heads is None else model.num_kv_heads
    k = model.d_model // model.num_heads if model.head_dim is None else model.head_dim
    f = model.mlp_ratio * model.d_model if model.mlp_width is None else model.mlp_width
    return g, k, f


def _check(model: Transformer) -> None:
    """Raises a one-line ValueError for a configuration the module cannot build."""
    sizes = ("vocab_size", "num_layers", "d_model", "num_heads", "context", "mlp_ratio")
    sizes += tuple(
        n for n in ("num_kv_heads", "mlp_width", "head_dim") if getattr(model, n) is not None
    )
    if min(getattr(model, n) for n in sizes) < 1:
        raise ValueError(f"{', '.join(sizes)} must be >= 1")
    if model.mlp not in MLPS:
        raise ValueError(f"unknown mlp {model.mlp!r}; choose one of {', '.join(MLPS)}")
    if model.head_dim is None and model.d_model % model.num_heads:
        raise ValueError(
            f"d_model {model.d_model} must be num_heads {model.num_heads} times an even width "
            "(or set head_dim)"
        )
    g, k, _ = dims(model)
    if k % 2:
        raise ValueError(f"the head width {k} must be even (rotary pairs)")
    if model.num_heads % g:
        raise ValueError(f"num_kv_heads {g} must divide num_heads {model.num_heads}")
    if not (model.rope_base > 0 and model.norm_eps >= 0):
        raise ValueError(f"rope_base {model.rope_base} must be > 0 and norm_eps >= 0")


def init_cache(model: Transformer, batch: int) -> KVCache:
    """An empty KV cache for `batch` sequences of up to `model.context` positions (G heads)."""
    g, k, _ = dims(model)
    shape = (model.num_layers, batch, model.context, g, k)
    return KVCache(jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype))


def decode_step(model: Transformer, params, cache: KVCache, token_B: jax.Array, pos):
    """(logits_BxV, cache): feeds `token_B` at position `pos` (< context) of every sequence."""
    pos = jnp.asarray(pos, jnp.int32)
    return model.apply(params, token_B, pos, cache, method=Transformer.decode)


def num_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(x.size for x in jax.tree.leaves(params))
