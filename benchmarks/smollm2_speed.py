"""SmolLM2-135M's speed: fine-tuning tokens/s and MFU, generation tokens/s, peak memory.

    python benchmarks/smollm2_speed.py                 # CPU, float32: minutes on 2 cores
    python benchmarks/smollm2_speed.py --weights real  # the real GGUF (fetched into the cache)
    python benchmarks/smollm2_speed.py --dtype bfloat16 --batch 32 --context 256 --steps 20 \\
        --peak-n 8192 --published-peak 989e12          # a GPU (H100 / H200 dense bf16 peak)

Training runs the runner's own compiled chunk (`make_chunk`: lax.scan over Adam steps of the
next-token loss) of the SmolLM2-135M architecture (30 blocks, width 576, 9 query / 3 key-value
heads, SwiGLU 1536, tied 49,152-token embedding), full fine-tuning. Speed does not depend on the
weights' values, so the default random weights need no download; `--weights real` loads the GGUF.
Model FLOPs per token = 6 x parameters (the tied embedding counted once, as the output head) +
12 x layers x context x (heads x head width) for the attention matmuls (forward and backward of
QK^T and PV over the full L x L, as computed). MFU is the achieved model FLOP/s over the best of
several large jnp.dot of the same dtype in the same process (before and after the work), and, with
`--published-peak`, over the device's datasheet peak. LoRA (`--lora RANK`, default 8: adapters
on attn_q, attn_v and mlp_up, the base frozen, as the pretrained_knowledge experiment trains them)
is timed on the same chunk and reported as tokens/s beside full fine-tuning's. Generation decodes
greedily with the KV cache from a one-token prompt to the end of the context, at batch 1 and 8.
Peak memory is this process's peak resident set (ru_maxrss), read after full fine-tuning; on a
GPU, the device's peak bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from peak import chunk_speed, matmul_peak_flops

from continual.generate import make_generate
from continual.models.partition import Partition
from continual.models.transformer import Transformer, num_params

SMOLLM2 = {  # the architecture check_smollm2 accepts
    "vocab_size": 49152,
    "num_layers": 30,
    "d_model": 576,
    "num_heads": 9,
    "num_kv_heads": 3,
    "mlp": "swiglu",
    "mlp_width": 1536,
    "rope_base": 100000.0,
    "norm_eps": 1e-5,
}


def build(weights: str, context: int, dtype):
    """(model, params) of SmolLM2-135M: random weights, or the real ones from the GGUF."""
    if weights == "real":
        from continual.data.smollm2 import load_smollm2
        from continual.models.llama_weights import params_from_gguf

        spec, tensors, _ = load_smollm2()
        return params_from_gguf(spec, tensors, context=context, dtype=dtype)
    model = Transformer(context=context, dtype=dtype, **SMOLLM2)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))


def flops_per_token(model: Transformer, params, context: int) -> float:
    """6 x parameters + the attention matmuls (see the module docstring)."""
    width = model.num_heads * (model.head_dim or model.d_model // model.num_heads)
    return 6 * num_params(params) + 12 * model.num_layers * context * width


def train_speed(model, params, batch: int, context: int, steps: int) -> dict:
    """Tokens/s and model FLOP/s of the runner's compiled chunk of `steps` Adam steps."""
    out = chunk_speed(model, params, batch, context, steps, lr=1e-5)
    out.update(params=num_params(params))
    out["flops_per_s"] = out["tokens_per_s"] * flops_per_token(model, params, context)
    return out


def lora_speed(model, params, batch: int, context: int, steps: int, rank: int) -> dict:
    """Tokens/s of the same chunk training LoRA adapters of `rank` on the attention's query and
    value and the MLP's up projection (the pretrained_knowledge experiment's), the base frozen."""
    targets = ("attn_q", "attn_v", "mlp_up")
    partition = Partition("lora", rank=rank, alpha=2.0 * rank, targets=targets)
    out = chunk_speed(model, params, batch, context, steps, lr=1e-4, partition=partition)
    return {**out, "rank": rank, "targets": list(targets)}


def generation_speed(model, params, batch: int) -> float:
    """Generated tokens/s, greedy with the KV cache, from one token to the end of the context."""
    generate = jax.jit(make_generate(model, max_len=model.context + 1, end_id=None, pad_id=None))
    prompt, length = jnp.full((batch, 1), 17, jnp.int32), jnp.ones((batch,), jnp.int32)
    jax.block_until_ready(generate(params, prompt, length))
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(params, prompt, length))
    seconds = time.perf_counter() - t0
    return float(np.sum(np.asarray(out.length_B) - 1)) / seconds


def peak_memory() -> dict:
    """Peak resident memory of this process, and the device's peak bytes where it tells."""
    out = {"rss_max_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = stats["peak_bytes_in_use"]
    return out


def main() -> None:
    """Prints a summary and one JSON line with every number."""
    p = argparse.ArgumentParser()
    p.add_argument("--weights", choices=("random", "real"), default="random")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-n", type=int, default=2048, help="the peak matmul's size")
    p.add_argument("--published-peak", type=float, default=None, help="FLOP/s, for MFU")
    p.add_argument("--gen-context", type=int, default=256)
    p.add_argument("--no-generate", action="store_true", help="measure training only")
    p.add_argument("--lora", type=int, default=8, help="LoRA rank measured beside (0: none)")
    args = p.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    load_before = os.getloadavg()
    peak_before = matmul_peak_flops(args.peak_n, dtype=dtype)
    print(
        f"{args.dtype} matmul peak (n={args.peak_n}): {peak_before / 1e9:.1f} GFLOP/s", flush=True
    )
    model, params = build(args.weights, args.context, dtype)
    train = train_speed(model, params, args.batch, args.context, args.steps)
    print(f"train: {json.dumps(train)}", flush=True)
    memory = peak_memory()  # full fine-tuning's: read before LoRA's run
    lora = {}
    if args.lora:
        fresh = build(args.weights, args.context, dtype)[1]  # training donated `params`
        lora = lora_speed(model, fresh, args.batch, args.context, args.steps, args.lora)
        print(f"lora: {json.dumps(lora)}", flush=True)
    gen = {}
    if not args.no_generate:
        gen_model, gen_params = build(args.weights, args.gen_context, dtype)
        gen = {f"batch{b}": generation_speed(gen_model, gen_params, b) for b in (1, 8)}
    peak_after = matmul_peak_flops(args.peak_n, dtype=dtype)
    peak = max(peak_before, peak_after)
    out = {
        "devices": [str(d) for d in jax.devices()],
        "cpus": os.cpu_count(),
        "args": vars(args),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "matmul_peak_flops": [peak_before, peak_after],
        "train": train,
        "lora": lora,
        "mfu_measured_peak": train["flops_per_s"] / peak,
        "generate_tokens_per_s": gen,
        "memory": memory,
    }
    if args.published_peak:
        out["mfu_published_peak"] = train["flops_per_s"] / args.published_peak
    print(f"devices {out['devices']}, load average {load_before} -> {out['load_average_after']}")
    print(
        f"{args.dtype} matmul peak (n={args.peak_n}): {peak_before / 1e9:.1f} GFLOP/s before, "
        f"{peak_after / 1e9:.1f} after"
    )
    print(
        f"full fine-tuning, Adam, B={train['batch']} L={train['context']}: "
        f"{train['tokens_per_s']:.0f} tokens/s, {train['flops_per_s'] / 1e9:.1f} GFLOP/s, "
        f"MFU {out['mfu_measured_peak']:.0%} of the measured peak"
        + (f", {out['mfu_published_peak']:.1%} of the published" if args.published_peak else "")
        + f" (first call, compile included: {train['first_call_s']:.1f} s)"
    )
    if lora:
        print(
            f"LoRA rank {lora['rank']} on {', '.join(lora['targets'])}, base frozen: "
            f"{lora['tokens_per_s']:.0f} tokens/s, "
            f"{lora['tokens_per_s'] / train['tokens_per_s']:.2f}x full fine-tuning's"
        )
    print(
        f"generation with the KV cache to {args.gen_context} tokens: "
        + ", ".join(f"{k} {v:.1f} tokens/s" for k, v in gen.items())
    )
    print(f"peak memory: {', '.join(f'{k} {v / 2**30:.2f} GiB' for k, v in memory.items())}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
