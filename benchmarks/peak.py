"""This machine's matmul peak, and the tokens/s of the runner's compiled training chunk of a
language model, measured in the benchmark's own process (shared machines are noisy: measure the
peak before and after the work and keep the best)."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from continual.losses import Objective, next_token
from continual.models.partition import Base, bind, taking_base
from continual.regularisers import identity
from continual.train import init_state, make_chunk, make_optimizer
from continual.types import Task, stack_tasks


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
    """The best FLOP/s of an n x n by n x n jnp.dot in `dtype` (fp32 by default) on the
    default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def chunk_speed(
    model, params, batch: int, context: int, steps: int, lr: float = 1e-3, partition=None
) -> dict:
    """Tokens/s of the runner's compiled chunk (`make_chunk`: `steps` Adam steps of the next-token
    loss in one lax.scan) on random tokens; the first call (compilation included) is timed apart.
    With a `partition` (continual.models.partition) only its trainable part trains, the frozen
    base an argument of the program, as the runner compiles it."""
    vocab = model.vocab_size
    ids = np.random.default_rng(0).integers(3, vocab, (4 * batch, context + 1)).astype(np.int32)
    data = {"x": ids[:, :-1], "y": ids[:, 1:]}
    task = Task(0, "random", data, {k: v[:1] for k, v in data.items()}, np.ones(vocab, bool))
    train, test = stack_tasks([task], "train"), stack_tasks([task], "test")
    apply, base = model.apply, None
    if partition is not None:
        params, frozen = partition.split(params, jax.random.key(2))
        base = Base(frozen)
        apply = bind(model.apply, partition, base)
    objective = Objective(apply, next_token, jnp.ones((1, vocab), bool))
    optimizer, reg = make_optimizer("adam", lr), identity()
    fn = make_chunk(objective, optimizer, reg, batch, steps)
    if base is None:
        chunk = jax.jit(fn, donate_argnums=0)
    else:
        chunk = functools.partial(jax.jit(taking_base(fn, base), donate_argnums=1), frozen)
    state = init_state(params, optimizer, reg, jax.random.key(1))
    trainable = jax.tree.map(lambda _: jnp.float32(1), params)
    zero, done = jnp.int32(0), jnp.int32(steps)
    t0 = time.perf_counter()
    state, losses, _ = chunk(state, train, test, zero, trainable, zero, zero)  # compiles
    jax.block_until_ready(losses)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, losses, _ = chunk(state, train, test, zero, trainable, done, done)
    jax.block_until_ready(losses)
    seconds = time.perf_counter() - t0
    return {
        "batch": batch,
        "context": context,
        "steps": steps,
        "seconds": seconds,
        "first_call_s": first,
        "tokens_per_s": batch * context * steps / seconds,
        "finite": bool(np.isfinite(np.asarray(losses["total"])).all()),
    }
