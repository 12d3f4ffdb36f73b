"""This machine's fp32 matmul peak, measured in the benchmark's own process (shared machines
are noisy: measure it before and after the work and keep the best)."""

import time

import jax
import jax.numpy as jnp


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """The best fp32 FLOP/s of an n x n by n x n jnp.dot on this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
