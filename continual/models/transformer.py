"""Decoder-only transformer language model: pre-norm (RMSNorm), rotary positions, causal attention.

One module serves both paths on the same params: `model.apply(params, tokens_BxL)` gives the
logits of every position; `decode_step(model, params, cache, token_B, pos)` feeds one token per
example at position `pos` and reads the keys and values of earlier positions from a KV cache
(`init_cache`). Shape suffixes: B batch, L positions, S cache positions, D model width, H heads,
K head width, F MLP width, V vocabulary, N layers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

MASKED = -1e9  # attention logit of a position a query may not see


class KVCache(NamedTuple):
    """Keys and values of every layer at every cache position (zeros where not yet written)."""

    k_NxBxSxHxK: jax.Array
    v_NxBxSxHxK: jax.Array


def _rope(x_BxLxHxK: jax.Array, pos_L: jax.Array) -> jax.Array:
    """Rotary position embedding: rotates pairs (i, i + K/2) by angle pos * 10000^(-2i/K)."""
    half = x_BxLxHxK.shape[-1] // 2
    freq_F = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_LxF = pos_L.astype(jnp.float32)[:, None] * freq_F[None, :]
    cos_1xLx1xF = jnp.cos(angle_LxF)[None, :, None, :]
    sin_1xLx1xF = jnp.sin(angle_LxF)[None, :, None, :]
    x1, x2 = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
    out = jnp.concatenate(
        [x1 * cos_1xLx1xF - x2 * sin_1xLx1xF, x2 * cos_1xLx1xF + x1 * sin_1xLx1xF], -1
    )
    return out.astype(x_BxLxHxK.dtype)


def _attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_LxS) -> jax.Array:
    """Softmax attention of L queries over S keys where `mask_LxS` allows (softmax in fp32)."""
    scale = q_BxLxHxK.shape[-1] ** -0.5
    s_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK).astype(jnp.float32) * scale
    s_BxHxLxS = jnp.where(mask_LxS[None, None], s_BxHxLxS, MASKED)
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1).astype(v_BxSxHxK.dtype)
    return jnp.einsum("bhls,bshk->blhk", p_BxHxLxS, v_BxSxHxK)


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x))."""

    d_model: int
    num_heads: int
    mlp_ratio: int
    dtype: Any

    def setup(self):
        k = self.d_model // self.num_heads
        dense = {"use_bias": False, "dtype": self.dtype}
        self.attn_norm = nn.RMSNorm(dtype=self.dtype)
        self.qkv = nn.DenseGeneral((3, self.num_heads, k), **dense)
        self.attn_out = nn.DenseGeneral(self.d_model, axis=(-2, -1), **dense)
        self.mlp_norm = nn.RMSNorm(dtype=self.dtype)
        self.mlp_in = nn.Dense(self.mlp_ratio * self.d_model, dtype=self.dtype)
        self.mlp_out = nn.Dense(self.d_model, dtype=self.dtype)

    def _qkv(self, x_BxLxD, pos_L):
        qkv_BxLx3xHxK = self.qkv(self.attn_norm(x_BxLxD))
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
        return _rope(q_BxLxHxK, pos_L), _rope(k_BxLxHxK, pos_L), v_BxLxHxK

    def _mlp(self, x_BxLxD):
        h_BxLxF = nn.gelu(self.mlp_in(self.mlp_norm(x_BxLxD)))
        return x_BxLxD + self.mlp_out(h_BxLxF)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        """The block applied to every position, each attending to itself and earlier ones."""
        pos_L = jnp.arange(x_BxLxD.shape[1])
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = self._qkv(x_BxLxD, pos_L)
        mask_LxL = pos_L[:, None] >= pos_L[None, :]
        a_BxLxHxK = _attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_LxL)
        return self._mlp(x_BxLxD + self.attn_out(a_BxLxHxK))

    def decode(self, x_Bx1xD, pos, k_BxSxHxK, v_BxSxHxK):
        """One position `pos` per example: writes its key and value into the cache, then attends."""
        q_Bx1xHxK, k_Bx1xHxK, v_Bx1xHxK = self._qkv(x_Bx1xD, pos[None])
        at = (0, pos, 0, 0)
        k_BxSxHxK = jax.lax.dynamic_update_slice(k_BxSxHxK, k_Bx1xHxK.astype(k_BxSxHxK.dtype), at)
        v_BxSxHxK = jax.lax.dynamic_update_slice(v_BxSxHxK, v_Bx1xHxK.astype(v_BxSxHxK.dtype), at)
        mask_1xS = (jnp.arange(k_BxSxHxK.shape[1]) <= pos)[None, :]
        a_Bx1xHxK = _attend(q_Bx1xHxK, k_BxSxHxK, v_BxSxHxK, mask_1xS)
        return self._mlp(x_Bx1xD + self.attn_out(a_Bx1xHxK)), k_BxSxHxK, v_BxSxHxK


class Transformer(nn.Module):
    """Token embedding, `num_layers` pre-norm blocks, final norm, output head (tied by default).

    `dtype` is the compute dtype (params stay fp32; bf16 is an option); logits are fp32.
    """

    vocab_size: int
    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    context: int = 128
    mlp_ratio: int = 4
    tied: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        if min(self.vocab_size, self.num_layers, self.d_model, self.num_heads, self.context) < 1:
            raise ValueError("vocab_size, num_layers, d_model, num_heads, context must be >= 1")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"d_model {self.d_model} must be num_heads {self.num_heads} times an even width"
            )
        init = nn.initializers.normal(0.02)
        self.embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=init, dtype=self.dtype)
        self.blocks = [
            Block(self.d_model, self.num_heads, self.mlp_ratio, self.dtype)
            for _ in range(self.num_layers)
        ]
        self.final_norm = nn.RMSNorm(dtype=self.dtype)
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
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x_Bx1xD, k_BxSxHxK, v_BxSxHxK = block.decode(
                x_Bx1xD, pos, cache.k_NxBxSxHxK[i], cache.v_NxBxSxHxK[i]
            )
            ks.append(k_BxSxHxK)
            vs.append(v_BxSxHxK)
        return self._logits(x_Bx1xD)[:, 0], KVCache(jnp.stack(ks), jnp.stack(vs))


def init_cache(model: Transformer, batch: int) -> KVCache:
    """An empty KV cache for `batch` sequences of up to `model.context` positions."""
    shape = (
        model.num_layers,
        batch,
        model.context,
        model.num_heads,
        model.d_model // model.num_heads,
    )
    return KVCache(jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype))


def decode_step(model: Transformer, params, cache: KVCache, token_B: jax.Array, pos):
    """(logits_BxV, cache): feeds `token_B` at position `pos` (< context) of every sequence."""
    pos = jnp.asarray(pos, jnp.int32)
    return model.apply(params, token_B, pos, cache, method=Transformer.decode)


def num_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(x.size for x in jax.tree.leaves(params))
