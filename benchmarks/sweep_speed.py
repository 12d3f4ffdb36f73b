"""One vmapped sweep vs the same members run one by one through the runner, in one process.

    python benchmarks/sweep_speed.py                     # 16 EWC strengths x 4 seeds = 64 members
    python benchmarks/sweep_speed.py --memory            # also: peak memory against member count

Workload: EWC (exact Fisher, separate mode) on split MNIST-1D, class-incremental, 5 tasks, MLP
40-100-100-10, Adam, batch 32, 500 steps per task, every task evaluated every 100 steps. Both
sides run the same members with the same seeds; the numbers they produce are compared. The
on-disk compilation cache is not used (it is a CLI feature), so both sides compile for real.
"""

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import numpy as np

from continual import runner
from continual import sweep as sw
from continual.experiments import split_mnist1d


def config(steps: int) -> dict:
    c = copy.deepcopy(split_mnist1d.get_config())
    c["train"].update(steps=steps, eval_every=min(steps, 100))
    return c


def vmapped(cfg, grid, seeds):
    t0 = time.perf_counter()
    (group,) = sw.plan_sweep(cfg, grid, seeds, {}, ["ewc"])
    results = sw.run_group(group)
    return time.perf_counter() - t0, group, results


def one_by_one(cfg, group):
    t0 = time.perf_counter()
    out = []
    for member in group.members:
        c = copy.deepcopy(cfg)
        c["seed"] = member.seed
        c["regularisers"]["ewc"]["strength"] = member.values["regularisers.ewc.strength"]
        out.append(runner.run(c, ["ewc"])[1]["ewc"])
    return time.perf_counter() - t0, out


def peak_rss_mb(members: int, steps: int) -> float:
    """Peak resident memory of a fresh process running a sweep of `members` members."""
    code = (
        "import sys, resource; sys.argv=['x']; import benchmarks.sweep_speed as b; "
        f"cfg=b.config({steps}); n={members}; "
        "grid={'regularisers.ewc.strength': list(b.np.geomspace(1, 1e6, n))}; "
        "b.vmapped(cfg, grid, 1); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return float("nan")
    return float(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strengths", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    cfg = config(args.steps)
    grid = {"regularisers.ewc.strength": np.geomspace(1, 1e6, args.strengths).tolist()}
    t_vmap, group, vres = vmapped(cfg, grid, args.seeds)
    t_seq, sres = one_by_one(cfg, group)
    # Per member: the largest difference anywhere in its matrix, and in its average accuracy.
    diff = np.array(
        [np.abs(np.subtract(a.matrix, b.matrix)).max() for a, b in zip(vres, sres, strict=True)]
    )
    avg_diff = np.array(
        [abs(a.summary["average"] - b.summary["average"]) for a, b in zip(vres, sres, strict=True)]
    )
    seq_compile = sum(r.timing["compile_s"] for r in sres)
    seq_run = sum(r.timing["run_s"] for r in sres)
    members = len(group.members)
    report = {
        "members": members,
        "vmapped_s": round(t_vmap, 2),
        "vmapped_compile_s": round(vres[0].timing["compile_s"], 2),
        "vmapped_run_s": round(vres[0].timing["run_s"], 2),
        "one_by_one_s": round(t_seq, 2),
        "one_by_one_compile_s": round(seq_compile, 2),
        "one_by_one_run_s": round(seq_run, 2),
        "speedup": round(t_seq / t_vmap, 2),
        "speedup_excluding_compile": round(seq_run / vres[0].timing["run_s"], 2),
        "matrix_max_abs_difference": float(diff.max()),
        "members_with_identical_matrix": int((diff == 0).sum()),
        "members_within_1e-6": int((diff <= 1e-6).sum()),
        "average_accuracy_abs_difference_median": float(np.median(avg_diff)),
        "average_accuracy_abs_difference_max": float(avg_diff.max()),
        "peak_rss_mb_this_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }
    if args.memory:
        counts = [1, 64, 256]
        rss = {n: peak_rss_mb(n, 100) for n in counts}
        per_member = (rss[256] - rss[64]) / (256 - 64)
        with open("/proc/meminfo") as f:
            total_mb = int(f.readline().split()[1]) / 1024
        report["peak_rss_mb_by_members"] = rss
        report["mb_per_member"] = round(per_member, 3)
        report["members_until_memory_runs_out_estimate"] = int((total_mb - rss[1]) / per_member)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
