"""Language-model speed on this machine: training tokens/s and MFU, generation tokens/s.

    python benchmarks/lm_speed.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/lm_speed.py --quick         # one training shape, fewer repeats

Training runs the runner's own compiled chunk (`make_chunk`: lax.scan over Adam steps of the
next-token loss) of a ~5M-parameter transformer on random tokens, for several batch x context
shapes. Model FLOPs per token = 6 x (matmul parameters, the tied output head included) + the
attention matmuls 12 x layers x context x d_model (forward and backward of QK^T and PV, the full
L x L as computed); MFU = achieved model FLOP/s over the fp32 matmul peak measured in the same
run (the best of several large square jnp.dot). Generation decodes to the end of the context
from a one-token prompt, greedily, with the KV cache and without (the whole prefix recomputed
each step). The load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from peak import chunk_speed, matmul_peak_flops

from continual.generate import make_generate
from continual.models.transformer import Transformer, num_params

VOCAB, LAYERS, WIDTH, HEADS = 256, 6, 256, 8  # 4.8M parameters


def model_flops_per_token(params, context: int) -> float:
    """6 x matmul parameters (the embedding counts once, as the tied head) + attention."""
    return 6 * num_params(params) + 12 * LAYERS * context * WIDTH


def train_speed(batch: int, context: int, steps: int) -> dict:
    """Tokens/s and model FLOP/s of the runner's compiled chunk of `steps` Adam steps."""
    model = Transformer(VOCAB, LAYERS, WIDTH, HEADS, context)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, context), jnp.int32))
    out = chunk_speed(model, params, batch, context, steps)
    out.update(params=num_params(params))
    out["flops_per_s"] = out["tokens_per_s"] * model_flops_per_token(params, context)
    return out


def generation_speed(context: int, batch: int, use_cache: bool) -> float:
    """Generated tokens/s, greedy, from a one-token prompt to the end of the context."""
    model = Transformer(VOCAB, LAYERS, WIDTH, HEADS, context)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    generate = jax.jit(make_generate(model, max_len=context + 1, use_cache=use_cache))
    prompt, length = jnp.full((batch, 1), 5, jnp.int32), jnp.ones((batch,), jnp.int32)
    jax.block_until_ready(generate(params, prompt, length))
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(params, prompt, length))
    seconds = time.perf_counter() - t0
    return float(np.sum(np.asarray(out.length_B) - 1)) / seconds


def main() -> None:
    """Prints a table and one JSON line with every number."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    peak = matmul_peak_flops()
    shapes = [(32, 256)] if args.quick else [(8, 128), (16, 256), (32, 256), (16, 512)]
    train = [train_speed(b, c, 5 if args.quick else 10) for b, c in shapes]
    gen = {
        f"{'cache' if c else 'no_cache'}_batch{b}": generation_speed(256, b, c)
        for b in (1, 8)
        for c in (True, False)
    }
    peak_after = matmul_peak_flops()
    out = {
        "devices": [str(d) for d in jax.devices()],
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "matmul_peak_flops": [peak, peak_after],
        "train": train,
        "generate_tokens_per_s": gen,
    }
    best_peak = max(peak, peak_after)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (after: {peak_after / 1e9:.1f})")
    print(f"load average before {load_before}, after {out['load_average_after']}")
    for t in train:
        print(
            f"train B={t['batch']:3d} L={t['context']:4d} params={t['params'] / 1e6:.2f}M  "
            f"{t['tokens_per_s']:8.0f} tokens/s  {t['flops_per_s'] / 1e9:6.1f} GFLOP/s  "
            f"MFU {t['flops_per_s'] / best_peak:.0%}"
        )
    for name, value in gen.items():
        print(f"generate {name:16s} {value:8.1f} tokens/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
