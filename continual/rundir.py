"""Run directories: choosing, creating and resuming them, and stopping a run on a signal.

A run directory holds config.json and run.json (what was asked: experiment, methods, sweep axes);
resuming one needs the same config and request unless the user allows a change. In a job of
several JAX processes (a distributed sweep) process 0 chooses and creates it for all of them.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

from continual import results as res


def fresh_name(out: str | Path, experiment: str, prefix: str = "") -> Path:
    """<out>/<experiment>/<prefix><stamp>: a directory name that does not exist yet."""
    base = Path(out) / experiment
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    path, i = base / stamp, 1
    while path.exists():
        path, i = base / f"{stamp}-{i}", i + 1
    return path


def create(run_dir: Path, config: dict, request: dict) -> None:
    """Makes the run directory with its config.json and run.json; one-line error if it can't."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise ValueError(f"cannot create run directory {str(run_dir)!r}: {e.strerror}") from None
    res.write_json(run_dir / "config.json", config)
    res.write_json(run_dir / "run.json", request)


def choose_shared(args, config: dict, request: dict, prefix: str = "") -> tuple[Path, bool]:
    """`choose` and `create` on process 0 alone; every process of a multi-process job gets the
    same (run directory, resume), or the same one-line error. One process: the same as both."""
    from continual import devices

    chosen = {}
    if devices.is_primary():
        try:
            run_dir, resume = choose(args, config, request, prefix)
            if not resume:
                create(run_dir, config, request)
            chosen = {"run_dir": str(run_dir), "resume": resume}
        except (ValueError, OSError) as e:
            chosen = {"error": str(e)}
    chosen = devices.from_primary(chosen)
    if "error" in chosen:
        raise ValueError(chosen["error"])
    return Path(chosen["run_dir"]), chosen["resume"]


def report_interrupted(error: Exception, stop: StopFlag, run_dir: Path) -> int:
    """Says how to resume an interrupted run (process 0 of a multi-process job alone); returns
    the exit code (128 + signal)."""
    from continual import devices

    name = signal.Signals(stop.signal).name if stop.signal else "another process was signalled"
    if devices.is_primary():
        how = f"continual resume {run_dir}"
        if devices.process_count() > 1:
            how = "the same command with --resume on every process"
        print(f"continual: {error} ({name}). Resume with: {how}", file=sys.stderr)
    return 128 + int(stop.signal or signal.SIGINT)


class StopFlag:
    """SIGINT / SIGTERM ask the run to checkpoint and stop at the next chunk boundary; a
    second SIGINT interrupts at once."""

    def __init__(self):
        self.signal = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self):
        def handler(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signum
            print(
                "continual: stopping at the next chunk boundary (checkpointing first)",
                file=sys.stderr,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
        return self

    def everywhere(self) -> bool:
        """Whether any process of the job was asked to stop: all of them then checkpoint and
        stop at the same chunk boundary (a collective when there are several)."""
        from continual import devices

        return devices.any_process(self())


def choose(args, config: dict, request: dict, prefix: str = "") -> tuple[Path, bool]:
    """The run directory for the command's arguments (out, experiment, name, resume, overwrite,
    allow_config_change), and whether this run resumes it. `request` is what run.json records
    (experiment, methods, sweep axes); resuming needs the same config and request."""
    base = Path(args.out) / args.experiment
    fixed = getattr(args, "run_dir", None)  # `continual resume DIR`: that directory, wherever
    if fixed:
        run_dir = Path(fixed)
    elif args.resume and not args.name:
        kind = request.get("kind", "run")
        existing = sorted(p for p in base.glob("*") if kind_of(p) == kind) if base.is_dir() else []
        if not existing:
            raise ValueError(f"--resume: no run of {args.experiment!r} under {str(base)!r}")
        run_dir = max(existing, key=lambda p: (p / "run.json").stat().st_mtime)
    else:
        run_dir = (
            base / args.name if args.name else fresh_name(args.out, args.experiment, prefix=prefix)
        )
    if not run_dir.exists():
        if args.resume:
            raise ValueError(f"--resume: run directory {str(run_dir)!r} does not exist")
        return run_dir, False
    if args.overwrite:
        shutil.rmtree(run_dir)
        return run_dir, False
    if not args.resume:
        raise ValueError(
            f"run directory {str(run_dir)!r} exists; pass --resume to continue it "
            "or --overwrite to replace it"
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        saved_request = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the run in {str(run_dir)!r}: {e}") from None
    from continual.runner import with_defaults

    saved = with_defaults(saved)  # a key added since the run was made reads as its default
    if saved_request != request and not args.allow_config_change:
        changed = sorted(differences(saved_request, request))
        raise ValueError(
            f"the command differs from the run's ({', '.join(changed[:3])}); pass "
            "--allow-config-change to resume anyway"
        )
    if saved != config and not args.allow_config_change:
        changed = sorted(differences(saved, config))
        raise ValueError(
            f"config differs from the run's ({', '.join(changed[:3])}); pass "
            "--allow-config-change to resume anyway"
        )
    return run_dir, True


def kind_of(run_dir: Path) -> str | None:
    """Whether a directory holds a "run" or a "sweep" (None: neither)."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("kind", "run")
    except (OSError, ValueError, AttributeError):
        return None


def differences(a, b, prefix="") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
