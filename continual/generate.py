"""Greedy and sampled decoding until [end] or a length limit, with a KV cache or without.

`make_generate` returns a pure function to jit once; it decodes a batch of right-padded prompts
in one `lax.while_loop` that stops when every sequence has produced [end]. All sequences share
the position t: while t is inside a prompt its next prompt token is copied, past it the chosen
token is written. The cached path feeds one token per step (`decode_step`); the reference path
recomputes the whole prefix every step. [pad] is never generated. The end and padding tokens
default to the character tokenizer's [end] and [pad]; a model with another vocabulary passes its
own ids.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from continual.data.text import END, PAD, CharTokenizer
from continual.models.transformer import Transformer, decode_step, init_cache


class Generation(NamedTuple):
    """A decoded batch; T = max_len, N = top_n."""

    tokens_BxT: jax.Array  # prompt, generated tokens ([end] included), then [pad]
    length_B: jax.Array  # number of tokens before the padding
    ended_B: jax.Array  # whether [end] was generated
    top_ids_BxTxN: jax.Array  # at each generated position: the N likeliest tokens (best first)
    top_probs_BxTxN: jax.Array  # and their probabilities at temperature 1; zeros elsewhere


def _check(model: Transformer, prompt_width: int, max_len: int) -> None:
    if prompt_width > model.context:
        raise ValueError(
            f"the prompt is {prompt_width} tokens, longer than the model's context of "
            f"{model.context}; shorten it or use a model with a longer context"
        )
    if not prompt_width < max_len <= model.context + 1:
        raise ValueError(
            f"max_len {max_len} must exceed the prompt width {prompt_width} and be at most "
            f"context + 1 = {model.context + 1}"
        )


def make_generate(
    model: Transformer,
    *,
    max_len: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_n: int = 0,
    use_cache: bool = True,
    end_id: int | None = END,
    pad_id: int | None = PAD,
):
    """generate(params, prompt_BxP, prompt_len_B, key) -> Generation, decoding to `max_len` tokens.

    temperature 0 is greedy; otherwise logits / temperature are sampled, from the `top_k`
    likeliest tokens when top_k > 0. Prompts are right-padded, each at least one token long.
    Generating `end_id` ends a sequence (None: every sequence runs to max_len); `pad_id` fills the
    positions after a sequence and is never generated (None: no token is barred, 0 fills).
    """
    if temperature < 0 or top_k < 0 or not 0 <= top_n <= model.vocab_size:
        raise ValueError("temperature and top_k must be >= 0 and top_n in [0, vocab_size]")
    ids = [i for i in (end_id, pad_id) if i is not None]
    if not all(0 <= i < model.vocab_size for i in ids) or (end_id is not None and end_id == pad_id):
        raise ValueError(f"end_id {end_id} and pad_id {pad_id} must be distinct token ids or None")
    fill = 0 if pad_id is None else pad_id
    _check(model, 0, max_len)

    def next_logits(params, cache, tokens_BxT, t):
        if use_cache:
            return decode_step(model, params, cache, tokens_BxT[:, t], t)
        width = min(max_len, model.context)
        logits_BxLxV = model.apply(params, tokens_BxT[:, :width])
        return jax.lax.dynamic_index_in_dim(logits_BxLxV, t, axis=1, keepdims=False), cache

    def choose(logits_BxV, key, t):
        if temperature == 0:
            return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        logits_BxV = logits_BxV / temperature
        if top_k:
            kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
            logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
        return jax.random.categorical(jax.random.fold_in(key, t), logits_BxV).astype(jnp.int32)

    def generate(params, prompt_BxP, prompt_len_B, key=None) -> Generation:
        """Decodes every prompt until [end] or max_len tokens."""
        if temperature > 0 and key is None:
            raise ValueError("sampling (temperature > 0) needs a PRNG key")
        batch, width = prompt_BxP.shape
        _check(model, width, max_len)
        prompt_len_B = jnp.asarray(prompt_len_B, jnp.int32)
        tokens_BxT = jnp.full((batch, max_len), fill, jnp.int32)
        tokens_BxT = tokens_BxT.at[:, :width].set(jnp.asarray(prompt_BxP, jnp.int32))
        top_ids_BxTxN = jnp.zeros((batch, max_len, top_n), jnp.int32)
        top_probs_BxTxN = jnp.zeros((batch, max_len, top_n), jnp.float32)
        cache = init_cache(model, batch) if use_cache else None
        done_B = jnp.zeros(batch, bool)
        state = (jnp.int32(0), tokens_BxT, prompt_len_B, done_B, cache)
        state = (*state, top_ids_BxTxN, top_probs_BxTxN)

        def cond(state):
            t, done_B = state[0], state[3]
            return (t + 1 < max_len) & ~jnp.all(done_B)

        def body(state):
            t, tokens_BxT, length_B, done_B, cache, top_ids_BxTxN, top_probs_BxTxN = state
            logits_BxV, cache = next_logits(params, cache, tokens_BxT, t)
            if pad_id is not None:
                logits_BxV = logits_BxV.at[:, pad_id].set(-jnp.inf)
            chosen_B = choose(logits_BxV, key, t)
            in_prompt_B = t + 1 < prompt_len_B
            fresh_B = ~in_prompt_B & ~done_B
            token_B = jnp.where(
                in_prompt_B, tokens_BxT[:, t + 1], jnp.where(done_B, fill, chosen_B)
            )
            tokens_BxT = tokens_BxT.at[:, t + 1].set(token_B)
            length_B = jnp.where(fresh_B, t + 2, length_B)
            if top_n:
                probs_BxN, ids_BxN = jax.lax.top_k(jax.nn.softmax(logits_BxV, axis=-1), top_n)
                keep_Bx1 = fresh_B[:, None]
                top_ids_BxTxN = top_ids_BxTxN.at[:, t + 1].set(jnp.where(keep_Bx1, ids_BxN, 0))
                top_probs_BxTxN = top_probs_BxTxN.at[:, t + 1].set(
                    jnp.where(keep_Bx1, probs_BxN, 0.0)
                )
            if end_id is not None:
                done_B = done_B | (fresh_B & (chosen_B == end_id))
            return (t + 1, tokens_BxT, length_B, done_B, cache, top_ids_BxTxN, top_probs_BxTxN)

        _, tokens_BxT, length_B, done_B, _, top_ids_BxTxN, top_probs_BxTxN = jax.lax.while_loop(
            cond, body, state
        )
        return Generation(tokens_BxT, length_B, done_B, top_ids_BxTxN, top_probs_BxTxN)

    return generate


class Completion(NamedTuple):
    """The continuation of one text prompt."""

    text: str  # generated text, without the prompt and without the end token
    ended: bool  # whether the end token was generated (else the length limit was reached)
    steps: list  # per generated token: ([(text, probability), ...] top-n, chosen token's text)


def end_and_pad(tokenizer) -> tuple[int, int | None]:
    """(end id, pad id or None) of a tokenizer: the character tokenizer's [end] and [pad], or a
    BPE tokenizer's eos and its pad (None where pad is eos, as in SmolLM2)."""
    if isinstance(tokenizer, CharTokenizer):
        return END, PAD
    pad = tokenizer.pad_id if tokenizer.pad_id != tokenizer.eos_id else None
    return tokenizer.eos_id, pad


def generate_text(
    model: Transformer,
    params,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int = 0,
    top_n: int = 0,
    seed: int = 0,
    use_cache: bool = True,
) -> Completion:
    """Continues `prompt` until the tokenizer's end token, `max_new_tokens`, or the end of the
    context; `tokenizer` is a CharTokenizer or a BPETokenizer."""
    ids = np.asarray(tokenizer.encode(prompt), np.int32)
    if not len(ids) or max_new_tokens < 1:
        raise ValueError("the prompt must be non-empty and max_new_tokens positive")
    _check(model, len(ids), len(ids) + 1)
    end_id, pad_id = end_and_pad(tokenizer)
    max_len = min(len(ids) + max_new_tokens, model.context + 1)
    generate = make_generate(
        model,
        max_len=max_len,
        temperature=temperature,
        top_k=top_k,
        top_n=top_n,
        use_cache=use_cache,
        end_id=end_id,
        pad_id=pad_id,
    )
    out = jax.jit(generate)(params, ids[None], np.array([len(ids)]), jax.random.key(seed))
    out = jax.tree.map(np.asarray, out)
    new = out.tokens_BxT[0, len(ids) : out.length_B[0]]
    text = new[:-1] if out.ended_B[0] and len(new) and new[-1] == end_id else new
    steps = [
        (
            [
                (tokenizer.decode([i]), float(p))
                for i, p in zip(out.top_ids_BxTxN[0, t], out.top_probs_BxTxN[0, t], strict=True)
            ],
            tokenizer.decode([new[t - len(ids)]]),
        )
        for t in range(len(ids), int(out.length_B[0]))
    ]
    return Completion(tokenizer.decode(text), bool(out.ended_B[0]), steps)


def format_steps(steps: list) -> str:
    """One line per generated token: the top-n characters with probabilities, then the chosen one.

    e.g. `在 0.20  东 0.15  西 0.13 → 北` (a space shows as ␣, a newline as \\n).
    """

    def show(char: str) -> str:
        return "␣" if char == " " else char if char.isprintable() else repr(char)[1:-1]

    return "\n".join(
        "  ".join(f"{show(c)} {p:.2f}" for c, p in top) + f" → {show(chosen)}"
        for top, chosen in steps
    )
