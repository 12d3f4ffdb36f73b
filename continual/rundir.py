"""Run directories: choosing, creating and resuming them, and stopping a run on a signal.

A run directory holds config.json and run.json (what was asked: experiment, methods, sweep axes);
resuming one needs the same config and request unless the user allows a change. In a job of
several JAX processes (a distributed sweep) process 0 chooses and creates it for all of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path


def fresh_name(out: str | Path, experiment: str, prefix: str = "") -> Path:
    """<out>/<experiment>/<prefix><stamp>: a directory name that does not exist yet."""
    base = Path(out) / experiment
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    path, i = base / stamp, 1
    while path.exists():
        path, i = base / f"{stamp}-{i}", i + 1
    return path


_HELD: dict[Path, object] = {}  # the run directories this process holds, open until release()


def lock(run_dir: Path) -> None:
    """Holds <run_dir>/.lock until `release()` (or the process's end): a second `continual`
    process on the same run directory (two resumes at once) is refused with one line."""
    key = run_dir.resolve()
    if key in _HELD:
        return
    try:
        f = open(run_dir / ".lock", "a+")
    except OSError as e:
        raise ValueError(f"cannot lock run directory {str(run_dir)!r}: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ValueError(
            f"run directory {str(run_dir)!r} is in use by another continual process; "
            "wait for it to finish or stop it first"
        ) from None
    _HELD[key] = f


def release() -> None:
    """Lets go of every run directory this process holds."""
    while _HELD:
        _HELD.popitem()[1].close()


def create(run_dir: Path, config: dict, request: dict) -> None:
    """Makes the run directory (held: see `lock`) with its config.json and run.json; one-line
    error if it can't."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise ValueError(f"cannot create run directory {str(run_dir)!r}: {e.strerror}") from None
    from continual import results as res

    lock(run_dir)
    res.write_json(run_dir / "config.json", config)
    res.write_json(run_dir / "run.json", {**request, DIGEST: config_digest(config)})


DIGEST = "config_sha256"  # run.json's record of the config the run began with


def config_digest(config: dict) -> str:
    """sha256 of the config's canonical JSON (as config.json holds it: tuples are lists)."""
    text = json.dumps(json.loads(json.dumps(config)), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_unchanged(run_dir: Path, config: dict, info: dict) -> None:
    """Refuses to resume a run whose config.json (`config`, as read) was edited after it began:
    its checkpoints and finished methods belong to the config run.json recorded. (Runs made
    before the record was kept are not checked.)"""
    recorded = info.get(DIGEST)
    if recorded is not None and recorded != config_digest(config):
        raise ValueError(
            f"{str(run_dir / 'config.json')!r} was changed after the run began (run.json "
            "records another); put it back, or run the experiment again under another --name"
        )


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
    return stop.exit_code()


class Stopped(Exception):
    """A signal stopped the command at a point with nothing to checkpoint; the message says
    where it stopped and what is on disk."""


class StopFlag:
    """Obeys SIGINT and SIGTERM at every moment of a command, from its first line. The first
    signal is recorded (nothing is raised inside whatever Python was running): training stops at
    the next chunk boundary after a checkpoint (`__call__`, read by the loop), any other phase at
    its next `check`. A second signal stops the process at once."""

    def __init__(self):
        self.signal = None
        self.training = False  # whether the loop reads the flag (it then checkpoints first)
        self._before = {}  # the handlers `install` replaced

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self):
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.signal is not None:
                print(f"continual: stopped at once ({name}, the second signal)", file=sys.stderr)
                os._exit(128 + signum)
            self.signal = signum
            if self.training:
                print(
                    f"continual: {name}: stopping at the next chunk boundary (checkpointing "
                    "first); a second signal stops at once",
                    file=sys.stderr,
                )

        for sig in (signal.SIGINT, signal.SIGTERM):  # again after jax.distributed took SIGTERM
            self._before.setdefault(sig, signal.signal(sig, handler))
        return self

    def uninstall(self) -> None:
        """Gives the signals back to the handlers they had before `install`."""
        for sig, before in self._before.items():
            signal.signal(sig, before)
        self._before = {}

    def check(self, where: str) -> None:
        """Raises Stopped (its message: `where`) when a signal has come."""
        if self.signal is not None:
            raise Stopped(where)

    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGINT)

    def everywhere(self) -> bool:
        """Whether any process of the job was asked to stop: all of them then checkpoint and
        stop at the same chunk boundary (a collective when there are several)."""
        from continual import devices

        return devices.any_process(self())


def check_name(name: str) -> str:
    """A run's --name: one path component, so that the run stays under --out/<experiment>."""
    if name in ("", ".", "..") or any(sep in name for sep in ("/", os.sep, os.altsep) if sep):
        raise ValueError(f"--name must be one directory name (no '/', not . or ..), got {name!r}")
    return name


def choose(args, config: dict, request: dict, prefix: str = "") -> tuple[Path, bool]:
    """The run directory for the command's arguments (out, experiment, name, resume, overwrite,
    allow_config_change), and whether this run resumes it. `request` is what run.json records
    (experiment, methods, sweep axes); resuming needs the same config and request."""
    base = Path(args.out) / args.experiment
    fixed = getattr(args, "run_dir", None)  # `continual resume DIR`: that directory, wherever
    if args.name is not None and not fixed:
        check_name(args.name)
    if getattr(args, "allow_config_change", False) and not (args.resume or fixed):
        raise ValueError("--allow-config-change goes with --resume")
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
    lock(run_dir)  # before anything reads or removes it
    if args.overwrite:
        shutil.rmtree(run_dir)
        release()
        return run_dir, False
    if not args.resume:
        raise ValueError(
            f"run directory {str(run_dir)!r} exists; pass --resume to continue it "
            "or --overwrite to replace it"
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        saved_request = dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read the run in {str(run_dir)!r}: {e}") from None
    check_unchanged(run_dir, saved, saved_request)
    saved_request.pop(DIGEST, None)
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
