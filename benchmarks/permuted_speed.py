"""Permuted MNIST at full speed: whole-stream seconds for naive, EWC and replay, the training
loop's achieved FLOP/s against this machine's fp32 matmul peak measured in the same run, the
share of evaluation, and peak memory.

    python benchmarks/permuted_speed.py                  # about 6 minutes on 2 CPU cores
    python benchmarks/permuted_speed.py --repeats 1      # one run of each method, 2 minutes

Workload (issue 3): 10 tasks, each one epoch of 50,000 images (390 steps of 128), MLP
784-400-400-10, SGD lr 0.01, all seen tasks evaluated (10,000 test images each) after each
task: `train.evaluate = "seen"`, so after task t tasks 0..t (55 task evaluations in all, none
before the first task; the unseen tasks are skipped inside the one compiled evaluation). The
images are stored once; each task's permutation is applied on the fly. EWC: online, exact
Fisher on 1,000 examples of the task (the estimator's cost is 10 backward passes per example);
replay: 5,000 examples, a replayed batch of 128 every step.

Each method runs in a fresh process (for its peak resident memory), through the runner, with
the on-disk compilation cache off, `--repeats` times (the methods alternating); each method's
row is its fastest whole stream, and the ratios are between those. The share of evaluation is
the runner's compiled evaluation timed alone after each task's seen tasks (tasks 0..t, mean of
3 each), summed over the stream,
against the naive stream's seconds; `evaluate_row0_s` and `evaluate_all_s` are one evaluation
after the first and after the last task (1 and 10 tasks evaluated). The peak is the best of
2 x 10 large square `jnp.dot`s in that same process (before and after the runs); the training
loop is the runner's own step under `lax.scan`, timed alone.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from peak import matmul_peak_flops

STEPS = 390  # 390 x 128 = 49,920: one epoch of 50,000 images
BATCH = 128


def config(method: str) -> dict:
    return {
        "seed": 0,
        "stream": {"name": "permuted", "source": "mnist", "num_tasks": 10, "scenario": "domain"},
        "model": {"name": "mlp", "widths": [400, 400]},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "train": {"steps": STEPS, "batch_size": BATCH, "eval_every": STEPS, "evaluate": "seen"},
        "regularisers": {
            "ewc": {"strength": 100.0, "mode": "online", "num_samples": 1000},
            "replay": {"capacity": 5000, "batch_size": BATCH},
        },
        "methods": {"naive": {}, "ewc": {"use": ["ewc"]}, "replay": {"use": ["replay"]}},
        "checkpoint": {"enabled": False},
        "run": [method],
    }


def training_loop_seconds(plan) -> float:
    """Seconds for one task's 390 naive steps under lax.scan, compiled and warmed up first."""
    from continual.program import compile_lowered
    from continual.runner import initial_state
    from continual.train import make_train_step, sample_batch

    method = plan.methods[0]
    step = make_train_step(method.objective, method.optimizer, method.regulariser)
    trainable = jax.tree.map(lambda p: jnp.float32(1.0), method.params)
    data = jax.device_put(plan.train)

    def loop(state):
        def body(s, _):
            batch = sample_batch(data, 0, jax.random.fold_in(s.key, s.step), BATCH)
            return step(s, batch, trainable)[0], None

        return jax.lax.scan(body, state, None, length=STEPS)[0]

    state = jax.tree.map(lambda a: a[0], initial_state(method, plan.key))
    run = compile_lowered(jax.jit(loop).lower(state))  # as the runner compiles
    jax.block_until_ready(run(state))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(run(state))
        best = min(best, time.perf_counter() - t0)
    return best


def child(method: str) -> dict:
    from continual import runner

    peak = matmul_peak_flops() / 1e9
    t0 = time.perf_counter()
    plan = runner.plan(config(method))
    build_s = time.perf_counter() - t0
    (results,) = runner.execute(plan).values()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the run's own peak
    from continual.program import Settings, compile_program
    from continual.runner import initial_state

    m = plan.methods[0]
    settings = Settings(STEPS, STEPS, BATCH, evaluate="seen")
    program, states = compile_program(
        m, initial_state(m, plan.key), plan.stream, plan.train, plan.test, settings
    )
    num_tasks = len(plan.stream.tasks)
    jax.block_until_ready(program.evaluate(states.params, plan.test, jnp.int32(num_tasks - 1)))
    per_row = []  # one evaluation after task `row`: tasks 0..row
    for row in range(num_tasks):
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(program.evaluate(states.params, plan.test, jnp.int32(row)))
        per_row.append((time.perf_counter() - t0) / 3)
    evaluate_s = sum(per_row)
    t0 = time.perf_counter()
    states, _ = program.finish(states, plan.train, jnp.int32(0))
    jax.block_until_ready(states)
    finish_s = (time.perf_counter() - t0) * len(plan.stream.tasks)
    params = sum(p.size for p in jax.tree.leaves(m.params))
    loop_s = training_loop_seconds(plan) if method == "naive" else None
    peak = max(peak, matmul_peak_flops() / 1e9)  # again: the machine may be shared
    out = {
        "method": method,
        "stream_s": round(results.timing["run_s"], 2),
        "compile_s": round(results.timing["compile_s"], 2),
        "build_s": round(build_s, 2),
        "evaluate_s": round(evaluate_s, 2),
        "evaluate_row0_s": round(per_row[0], 3),
        "evaluate_all_s": round(per_row[-1], 3),
        "end_of_task_s": round(finish_s, 2),
        "average_accuracy": round(results.summary["average"], 4),
        "matmul_peak_gflops": round(peak, 1),
        "params": params,
        "peak_rss_mib": round(rss_mib, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if loop_s is not None:
        gflops = 6 * params * STEPS * BATCH / loop_s / 1e9
        out["training_loop_s_per_task"] = round(loop_s, 3)
        out["training_loop_gflops"] = round(gflops, 1)
        out["training_loop_fraction_of_peak"] = round(gflops / peak, 3)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--methods", default="naive,ewc,replay")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    if args.repeats < 1:
        sys.exit(f"--repeats must be at least 1, got {args.repeats}")
    runs: dict[str, list] = {}
    for _ in range(args.repeats):  # the methods alternate, so slow spells hit them alike
        for method in args.methods.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--child", method],
                capture_output=True,
                text=True,
                env={**os.environ, "CONTINUAL_CACHE": "off"},
            )
            if done.returncode:
                sys.exit(f"{method} failed:\n{done.stderr[-2000:]}")
            runs.setdefault(method, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[method][-1]), flush=True)
    # Each method's fastest whole stream (the one least disturbed by the shared host's other
    # work), with every repeat's seconds beside it.
    rows = {}
    for method, rs in runs.items():
        rows[method] = {
            **min(rs, key=lambda r: r["stream_s"]),
            "stream_s_repeats": [r["stream_s"] for r in rs],
        }
    naive = rows.get("naive")
    summary = {}
    if naive:
        for row in rows.values():
            row["stream_vs_naive"] = round(row["stream_s"] / naive["stream_s"], 3)
        summary = {m: r["stream_vs_naive"] for m, r in rows.items()}
        summary["evaluate_fraction_of_naive_stream"] = round(
            naive["evaluate_s"] / naive["stream_s"], 3
        )
    print(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
