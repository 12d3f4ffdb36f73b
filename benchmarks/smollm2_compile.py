"""How long XLA takes to compile SmolLM2-135M's training chunk, with the runner's exact CPU compile
options and without them (train.exact_compile).

    python benchmarks/smollm2_compile.py            # about 6 minutes on 2 CPU cores

The chunk is the runner's (`make_chunk`: 4 Adam steps of the next-token loss in one lax.scan, then
the evaluation of the test split) for random weights of SmolLM2-135M's architecture, batch 8 of
104 tokens. Each variant is lowered and compiled in this process (continual.program.
compile_lowered, exact or not), then run twice; the second run is timed. Prints one line each and
a JSON line.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from smollm2_speed import SMOLLM2

from continual.losses import Objective, next_token
from continual.models.transformer import Transformer
from continual.program import compile_lowered
from continual.regularisers import identity
from continual.train import init_state, make_chunk, make_optimizer
from continual.types import Task, stack_tasks

BATCH, CONTEXT, STEPS = 8, 104, 4


def measure(exact: bool) -> dict:
    """Compile seconds and training tokens/s of the chunk, with or without the exact options."""
    model = Transformer(context=CONTEXT, **SMOLLM2)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    vocab = model.vocab_size
    ids = np.random.default_rng(0).integers(3, vocab, (32, CONTEXT + 1)).astype(np.int32)
    data = {"x": ids[:, :-1], "y": ids[:, 1:]}
    task = Task(0, "random", data, {k: v[:BATCH] for k, v in data.items()}, np.ones(vocab, bool))
    train, test = stack_tasks([task], "train"), stack_tasks([task], "test")
    objective = Objective(model.apply, next_token, jnp.ones((1, vocab), bool))
    optimizer, reg = make_optimizer("adam", 1e-5), identity()
    chunk = jax.jit(make_chunk(objective, optimizer, reg, BATCH, STEPS), donate_argnums=0)
    state = init_state(params, optimizer, reg, jax.random.key(1))
    trainable = jax.tree.map(lambda _: jnp.float32(1), params)
    zero, done = jnp.int32(0), jnp.int32(STEPS)
    t0 = time.perf_counter()
    compiled = compile_lowered(chunk.lower(state, train, test, zero, trainable, zero, zero), exact)
    compile_s = time.perf_counter() - t0
    state, losses, _ = compiled(state, train, test, zero, trainable, zero, zero)
    jax.block_until_ready(losses)
    t0 = time.perf_counter()
    state, losses, _ = compiled(state, train, test, zero, trainable, done, done)
    jax.block_until_ready(losses)
    seconds = time.perf_counter() - t0
    return {
        "exact": exact,
        "compile_s": compile_s,
        "tokens_per_s": BATCH * CONTEXT * STEPS / seconds,
        "losses": np.asarray(losses["total"]).tolist(),
    }


def main() -> None:
    """Both variants, one after the other, in this process."""
    load = os.getloadavg()
    out = [measure(exact) for exact in (True, False)]
    for r in out:
        print(
            f"exact_compile={r['exact']}: compile {r['compile_s']:.1f} s, "
            f"training {r['tokens_per_s']:.0f} tokens/s"
        )
    print(json.dumps({"load_average_before": load, "after": os.getloadavg(), "runs": out}))


if __name__ == "__main__":
    main()
