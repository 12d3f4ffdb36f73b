"""End-to-end time of `continual run linear_toy`, split into import / compile / run / the rest.

    python benchmarks/linear_toy_e2e.py [--repeats 3]

Each repeat is a fresh interpreter. "cold" runs start with an empty compilation cache, "warm"
runs reuse the on-disk cache that the first warm run fills (what a researcher re-running an
experiment gets). The split comes from the same runs: import is timed in its own interpreter,
compile and run are the sums of every method's timing in results.json, and the rest (config,
building the parts, plots, writing files) is what remains of the wall time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = "import jax, jax.numpy, flax.linen, optax, continual.runner, continual.cli"


def wall(cmd, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def one_run(out: Path, cache: str) -> dict:
    env = {**os.environ, "CONTINUAL_CACHE": cache}
    seconds = wall(
        [sys.executable, "-m", "continual.cli", "run", "linear_toy", "--out", str(out), "--quiet"],
        env,
    )
    run_dir = max((out / "linear_toy").iterdir())
    timings = [json.loads(p.read_text())["timing"] for p in run_dir.glob("*/results.json")]
    compile_s = sum(t["compile_s"] for t in timings)
    run_s = sum(t["run_s"] for t in timings)
    return {"total": seconds, "compile": compile_s, "run": run_s}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    imports = [wall([sys.executable, "-c", IMPORTS], dict(os.environ)) for _ in range(args.repeats)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = [one_run(tmp / f"cold{i}", str(tmp / f"cache{i}")) for i in range(args.repeats)]
        one_run(tmp / "fill", str(tmp / "warm_cache"))  # fills the warm cache
        warm = [one_run(tmp / f"warm{i}", str(tmp / "warm_cache")) for i in range(args.repeats)]
    imp = statistics.median(imports)
    for name, runs in (("cold cache", cold), ("warm cache", warm)):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med["import"] = imp
        med["rest"] = med["total"] - imp - med["compile"] - med["run"]
        rows[name] = med
    print(
        f"continual run linear_toy, median of {args.repeats} fresh interpreters "
        f"({os.cpu_count()} CPUs)"
    )
    print(f"{'':<12}{'total':>8}{'import':>8}{'compile':>9}{'run':>7}{'rest':>7}   seconds")
    for name, m in rows.items():
        print(
            f"{name:<12}{m['total']:8.2f}{m['import']:8.2f}{m['compile']:9.2f}{m['run']:7.2f}"
            f"{m['rest']:7.2f}"
        )


if __name__ == "__main__":
    main()
