"""Checkpoints of a method's whole run state with orbax, and their restoration.

A checkpoint holds the stacked TrainStates (params, optimizer state, regulariser state such as
Fisher slots, anchors and replay buffers, PRNG keys as key data, step) and the loop's Progress
(where it is, the metric matrix and curves so far, divergence marks) as JSON. orbax writes each
checkpoint to a temporary directory and renames it when complete; the last `keep` are kept.
Every file of a finished checkpoint has its sha256 in its digest.json, so that silent damage
(flipped bytes, a missing file) is found before the states are used. A checkpoint that cannot be
read or fails its digest is moved aside with a warning, and the one before it is used.

With several JAX processes (devices.py) all of them save and restore together (orbax writes each
shard once, so the directory must be one they all see) and agree on which checkpoint is
readable; process 0 alone moves a broken one aside.

The loop's Progress (what a checkpoint holds beside the states) and the save / resume hooks the
task loop takes (`checkpointing`) are defined here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from continual import devices
from continual.faults import fault_point


def _is_key(a) -> bool:
    return jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def to_saveable(states):
    """Typed PRNG keys become their key data (plain uint32 arrays)."""
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, states)


def from_saveable(saved, template):
    """Inverse of to_saveable, guided by a template of the original states."""
    return jax.tree.map(
        lambda s, t: (
            jax.random.wrap_key_data(jnp.asarray(s), impl=jax.random.key_impl(t))
            if _is_key(t)
            else jnp.asarray(s, t.dtype)
        ),
        saved,
        template,
    )


class Checkpointer:
    """The checkpoints of one method's run: `directory/<step>/`."""

    def __init__(self, directory: Path, keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, states, progress: dict) -> None:
        """Saves the states and the progress as checkpoint `step` (written atomically)."""
        ocp = self._ocp
        if step in self.manager.all_steps():  # only a resume under a changed config comes here
            raise ValueError(
                f"checkpoint {self.directory / str(step)} exists already: the run was resumed "
                "with a config its checkpoints cannot follow; resume it with its own config"
            )
        self.manager.save(
            step,
            args=ocp.args.Composite(
                states=ocp.args.StandardSave(to_saveable(states)),
                progress=ocp.args.JsonSave(progress),
            ),
            force=True,
        )
        fault_point("checkpoint_write")  # the write may still be going on in the background
        self.manager.wait_until_finished()
        if devices.is_primary():  # (a kill before this leaves a checkpoint without a digest)
            step_dir = self.directory / str(step)
            digests = json.dumps(file_digests(step_dir), indent=0)
            (step_dir / f".{DIGEST}.tmp").write_text(digests)
            os.replace(step_dir / f".{DIGEST}.tmp", step_dir / DIGEST)  # whole or absent

    def restore_latest(self, template, move_aside: bool = True):
        """(states, progress) of the newest readable checkpoint, or None if there is none.

        `template` is a TrainState of the right structure, shapes and devices (fresh initial
        states); unreadable checkpoints are skipped with a warning and, with `move_aside`, moved
        to corrupt_checkpoints/ (a read-only caller passes False). A checkpoint whose state has a
        different layout (another version of continual) is an error, not a corruption."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_saveable(template))
        # Process 0's list, so that every process tries the same steps in the same order.
        for step in devices.from_primary(sorted(self.manager.all_steps(), reverse=True)):
            error = check_digests(self.directory / str(step))
            try:
                if error is None:
                    got = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            states=ocp.args.StandardRestore(abstract),
                            progress=ocp.args.JsonRestore(),
                        ),
                    )
            except Exception as e:  # any failure to read means: move it aside, use an older one
                error = e
            if not devices.any_process(error is not None):  # every process agrees on the step
                return from_saveable(got["states"], template), got["progress"]
            layout = error is not None and "tree structure" in str(error)
            if devices.any_process(layout):  # readable, but not this code's state layout
                raise ValueError(
                    f"checkpoint {self.directory / str(step)} holds a different state layout "
                    "(written by another version of continual); start over with --overwrite"
                ) from None
            why = f"{type(error).__name__}: {str(error)[:200]}" if error else "on another process"
            if not move_aside:
                warnings.warn(
                    f"checkpoint {self.directory / str(step)} is unreadable ({why}); "
                    "trying an older one",
                    stacklevel=2,
                )
                continue
            aside, i = self.directory.parent / "corrupt_checkpoints" / str(step), 1
            while aside.exists():
                aside, i = aside.with_name(f"{step}-{i}"), i + 1
            aside = Path(devices.from_primary(str(aside)))
            if devices.is_primary():
                warnings.warn(
                    f"checkpoint {self.directory / str(step)} is unreadable ({why}); moved to "
                    f"{aside}, trying an older one",
                    stacklevel=2,
                )
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(self.directory / str(step)), aside)
            devices.barrier(f"checkpoint {step} moved aside")
            self.manager.reload()
        return None

    def close(self) -> None:
        self.manager.close()


DIGEST = "digest.json"  # in each checkpoint: {relative path: sha256} of its other files


def file_digests(step_dir: Path) -> dict[str, str]:
    """sha256 of every file under `step_dir` but the digest itself."""
    out = {}
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.name != DIGEST:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
            out[f.relative_to(step_dir).as_posix()] = h.hexdigest()
    return out


def check_digests(step_dir: Path) -> ValueError | None:
    """The damage a checkpoint's files show against its digest.json, or None (also when it has
    none: one written before digests were kept, or killed before its digest was)."""
    try:
        recorded = json.loads((step_dir / DIGEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return ValueError(f"its {DIGEST} is unreadable: {e}")
    found = file_digests(step_dir)
    for name, digest in recorded.items():
        if name not in found:
            return ValueError(f"{name} is missing")
        if found[name] != digest:
            return ValueError(f"{name} does not match its sha256")
    return None


class CheckpointSettings(NamedTuple):
    """When to checkpoint: at the end of every task when `enabled`, also every `every_chunks`
    chunks (0: only at task ends), keeping the newest `keep`."""

    enabled: bool = True
    every_chunks: int = 0
    keep: int = 3


@dataclass
class Progress:
    """Where the loop is and what it has recorded: with the states, all a checkpoint needs.

    JSON-serialisable (a missing value is None)."""

    row: int = 0  # the task row being trained
    chunk: int = 0  # chunks of that row already done
    step: int = 0  # steps done over all rows
    steps: list[int] = field(default_factory=list)  # step of every evaluation
    training_task: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)  # every evaluation: (members, tasks)
    last_loss: list = field(default_factory=list)  # per member
    diverged: list = field(default_factory=list)  # per member: None or {task, step, ...}
    params: list = field(default_factory=list)  # per finished row, per member (small models)
    probes: list = field(default_factory=list)  # per finished row, per member
    ends: list[int] = field(default_factory=list)  # per finished row: index of its last eval
    view: list = field(default_factory=list)  # the other reading: before training, each row
    losses: list = field(default_factory=list)  # per chunk: {part: per member chunk mean}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Progress:
        return cls(**d)


def checkpointing(directory: Path, keep: int, members: int, states, resume: bool):
    """(states, progress, save) for a program of `members` real members that checkpoints into
    `directory`, keeping the newest `keep`: the states and progress come from its newest
    readable checkpoint when resuming (else progress is None)."""
    checkpointer = Checkpointer(directory, keep)
    progress = None

    def real(states):  # checkpoints hold the real members only, not the device padding
        return jax.tree.map(lambda a: a[:members], states)

    if resume:
        restored = checkpointer.restore_latest(real(states))
        if restored is not None:
            states = devices.shard_members(restored[0])[0]
            progress = Progress.from_json(restored[1])

    def save(states, progress):
        checkpointer.save(progress.step, real(states), progress.to_json())

    return states, progress, save
