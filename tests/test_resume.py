"""Checkpoints and exact resume: SIGKILL at several points, SIGTERM, corrupt checkpoints."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = [
    "run",
    "split_blobs",
    "--quiet",
    "--no-plots",
    "--method",
    "naive",
    "--method",
    "ewc+replay",
    "--set",
    "train.steps=100",
    "--set",
    "train.eval_every=50",
    "--set",
    "checkpoint.every_chunks=1",
    "--set",
    "stream.num_tasks=2",
    "--set",
    "stream.train_per_class=40",
    "--set",
    "stream.test_per_class=20",
]
METHODS = ("naive", "ewc+replay")


def cli(args, out, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "CONTINUAL_FAULT"}
    if fault:
        env["CONTINUAL_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "continual.cli", *args],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def results(run_dir: Path) -> dict:
    out = {}
    for m in METHODS:
        r = json.loads((run_dir / m / "results.json").read_text())
        r.pop("timing")  # wall-clock seconds are the only numbers allowed to differ
        out[m] = r
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    done = cli([*RUN, "--out", str(out), "--name", "full"], out)
    assert done.returncode == 0, done.stderr
    return results(out / "split_blobs" / "full")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", ["chunk:3", "task:1", "task:3", "checkpoint_write:2", "checkpoint_write:5"]
)
def test_sigkill_then_resume_gives_the_uninterrupted_results(fault, reference, tmp_path):
    killed = cli([*RUN, "--out", str(tmp_path), "--name", "x"], tmp_path, fault=fault)
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "split_blobs" / "x"
    done = cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert results(run_dir) == reference


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(reference, tmp_path):
    stopped = cli([*RUN, "--out", str(tmp_path), "--name", "x"], tmp_path, fault="chunk:2:TERM")
    assert stopped.returncode == 128 + 15, stopped.stderr
    assert "Resume with: continual resume" in stopped.stderr
    run_dir = tmp_path / "split_blobs" / "x"
    again = cli([*RUN, "--out", str(tmp_path), "--name", "x", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert results(run_dir) == reference


def _garbage(states: Path) -> str:
    for f in states.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    return "does not match its sha256"


def _flipped_bytes(states: Path) -> str:  # silent: orbax reads the damaged array as it is
    data = max(
        (f for f in states.rglob("*") if f.parent.name == "d"), key=lambda f: f.stat().st_size
    )
    b = bytearray(data.read_bytes())
    b[len(b) // 2] ^= 0xFF
    data.write_bytes(bytes(b))
    return f"{data.relative_to(states.parent).as_posix()} does not match its sha256"


def _no_metadata(states: Path) -> str:  # once mistaken for another version's state layout
    (states / "_METADATA").unlink()
    return "states/_METADATA is missing"


def _truncated_manifest(states: Path) -> str:
    manifest = next(states.rglob("manifest.ocdbt"))
    manifest.write_bytes(manifest.read_bytes()[:20])
    return "manifest.ocdbt does not match its sha256"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_garbage, _flipped_bytes, _no_metadata, _truncated_manifest])
def test_a_damaged_newest_checkpoint_is_moved_aside_with_a_warning(damage, reference, tmp_path):
    killed = cli([*RUN, "--out", str(tmp_path), "--name", "x"], tmp_path, fault="chunk:4")
    assert killed.returncode == -9
    ckpts = tmp_path / "split_blobs" / "x" / "naive" / "checkpoints"
    steps = sorted((p for p in ckpts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(steps) >= 2 and all((p / "digest.json").exists() for p in steps)
    why = damage(steps[-1] / "states")
    done = cli(["resume", str(tmp_path / "split_blobs" / "x"), "--quiet", "--no-plots"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{steps[-1]} is unreadable (ValueError: " in done.stderr and why in done.stderr
    assert (ckpts.parent / "corrupt_checkpoints" / steps[-1].name).is_dir()
    assert results(tmp_path / "split_blobs" / "x") == reference


@pytest.mark.slow
def test_existing_run_needs_resume_or_overwrite_and_the_same_config(reference, tmp_path):
    base = [*RUN, "--out", str(tmp_path), "--name", "x"]
    assert cli(base, tmp_path).returncode == 0
    again = cli(base, tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    changed = cli([*base, "--resume", "--set", "regularisers.ewc.strength=5"], tmp_path)
    assert changed.returncode == 2 and "regularisers.ewc.strength" in changed.stderr
    assert changed.stderr.count("\n") == 1
    allowed = cli(
        [*base, "--resume", "--set", "regularisers.ewc.strength=5", "--allow-config-change"],
        tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr  # everything was finished: nothing to redo
    fresh = cli([*base, "--overwrite"], tmp_path)
    assert fresh.returncode == 0 and results(tmp_path / "split_blobs" / "x") == reference
    shutil.rmtree(tmp_path / "split_blobs")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, code, message",
    [
        ("start:1:INT", 130, "continual: stopped (SIGINT) before anything was written\n"),
        ("results:1:TERM", 143, "continual: stopped (SIGTERM) after training, every result"),
        ("plots:1:INT", 130, "continual: stopped (SIGINT) after training, every result written"),
        ("chunk:2:INT:2", 130, "continual: stopped at once (SIGINT, the second signal)\n"),
    ],
)
def test_every_moment_of_a_run_obeys_a_signal(fault, code, message, reference, tmp_path):
    argv = [a for a in RUN if a != "--no-plots" or fault.startswith("results")]
    stopped = cli([*argv, "--out", str(tmp_path), "--name", "x"], tmp_path, fault=fault)
    assert stopped.returncode == code, stopped.stderr
    assert stopped.stderr.endswith(message) or message in stopped.stderr.splitlines()[-1]
    assert len(stopped.stderr.splitlines()) == (2 if fault.startswith("chunk") else 1)
    run_dir = tmp_path / "split_blobs" / "x"
    if fault.startswith("start"):
        assert not tmp_path.joinpath("split_blobs").exists()
        return
    assert not (run_dir / "plots").exists()
    if fault.startswith("chunk"):  # the second signal: no checkpoint of this chunk, but a resume
        done = cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
        assert done.returncode == 0, done.stderr
    assert results(run_dir) == reference


@pytest.mark.slow
def test_a_config_edited_after_the_run_began_is_refused(tmp_path):
    killed = cli([*RUN, "--out", str(tmp_path), "--name", "x"], tmp_path, fault="chunk:3")
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "split_blobs" / "x"
    config = json.loads((run_dir / "config.json").read_text())
    config["train"]["steps"] = 50  # checkpoints of steps 100 and 150 exist
    (run_dir / "config.json").write_text(json.dumps(config))
    for argv in (
        ["resume", str(run_dir)],
        [*RUN, "--out", str(tmp_path), "--name", "x", "--resume"],
    ):
        edited = cli(argv, tmp_path)
        assert edited.returncode == 2 and edited.stderr.count("\n") == 1, edited.stderr
        assert "config.json' was changed after the run began" in edited.stderr
    config["train"]["steps"] = 100
    (run_dir / "config.json").write_text(json.dumps(config))  # put back (in another layout)
    changed = [*RUN, "--out", str(tmp_path), "--name", "x", "--resume", "--allow-config-change"]
    shorter = cli([*changed, "--set", "train.steps=50"], tmp_path)
    assert shorter.returncode == 2 and shorter.stderr.count("\n") == 1, shorter.stderr
    assert "exists already: the run was resumed with a config its" in shorter.stderr
    assert cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path).returncode == 0


@pytest.mark.slow
def test_truncated_results_are_named_and_computed_again(reference, tmp_path):
    base = [*RUN, "--out", str(tmp_path), "--name", "x"]
    assert cli(base, tmp_path).returncode == 0
    run_dir = tmp_path / "split_blobs" / "x"
    for name in ("naive/results.json", "comparison.json"):
        text = (run_dir / name).read_text()
        (run_dir / name).write_text(text[: len(text) // 2])
    plot = cli(["plot", str(run_dir)], tmp_path)  # the method order comes from run.json
    assert plot.returncode == 2 and plot.stderr.count("\n") == 2, plot.stderr
    assert "cannot read " + str(run_dir / "comparison.json") in plot.stderr
    assert "cannot read " + str(run_dir / "naive" / "results.json") in plot.stderr
    done = cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "naive/results.json (JSONDecodeError" in done.stderr, done.stderr
    assert (run_dir / "naive" / "results.json.unreadable").exists()
    assert results(run_dir) == reference  # naive again, from its last checkpoint
    assert list(json.loads((run_dir / "comparison.json").read_text())) == list(METHODS)
    assert cli(["plot", str(run_dir)], tmp_path).returncode == 0


SWEEP = [
    "sweep",
    "split_blobs",
    "--quiet",
    "--no-plots",
    "--method",
    "ewc",
    "--grid",
    "regularisers.ewc.strength=1,100",
    "--seeds",
    "2",
    *RUN[8:],
]


def sweep_members(run_dir: Path) -> list:
    doc = json.loads((run_dir / "sweep.json").read_text())
    out = []
    for m in doc["members"]:
        r = json.loads((run_dir / m["path"] / "results.json").read_text())
        r.pop("timing")
        out.append(r)
    return out


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_same_numbers(tmp_path):
    full = cli([*SWEEP, "--out", str(tmp_path), "--name", "full"], tmp_path)
    assert full.returncode == 0, full.stderr
    killed = cli([*SWEEP, "--out", str(tmp_path), "--name", "x"], tmp_path, fault="chunk:3")
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "split_blobs" / "x"
    assert not (run_dir / "sweep.json").exists()
    # Earlier versions named a program's checkpoint folder by its index: such a sweep resumes
    # from it, under the folder's new name, with `continual resume`.
    (folder,) = (run_dir / "checkpoints").iterdir()
    assert folder.name.startswith("ewc-") and any(folder.iterdir())
    folder.rename(run_dir / "checkpoints" / "0")
    config = json.loads((run_dir / "config.json").read_text())
    del config["model"]["initializer"]  # nor had they this key: it reads as its default
    (run_dir / "config.json").write_text(json.dumps(config))
    request = json.loads((run_dir / "run.json").read_text())
    del request["config_sha256"]  # nor a record of the config they began with
    (run_dir / "run.json").write_text(json.dumps(request))
    done = cli(["resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [folder.name]
    assert sweep_members(run_dir) == sweep_members(tmp_path / "split_blobs" / "full")


def test_a_checkpoint_of_another_state_layout_is_an_error_not_a_corruption(tmp_path):
    import jax.numpy as jnp

    from continual.checkpoint import Checkpointer
    from continual.types import TrainState

    def state(reg_state):
        return TrainState(
            jnp.zeros((1,), jnp.int32),
            {"w": jnp.ones((1, 2))},
            (),
            reg_state,
            jnp.zeros((1, 2), jnp.uint32),
        )

    folder = tmp_path / "m" / "checkpoints"
    saver = Checkpointer(folder)
    saver.save(1, state({"x": jnp.ones((1, 3))}), {"row": 1})
    saver.close()
    with pytest.raises(ValueError, match="different state layout"):
        Checkpointer(folder).restore_latest(
            state({"memory": jnp.ones((1, 3)), "tasks": jnp.zeros((1,))})
        )
    assert (folder / "1").is_dir() and not (tmp_path / "m" / "corrupt_checkpoints").exists()


@pytest.mark.slow
def test_a_resumed_run_reports_the_steps_done_before_to_its_progress_bar(tmp_path):
    from test_sweep import tiny_config

    from continual import runner
    from continual.loop import Interrupted

    plan = runner.plan(runner.with_defaults(tiny_config()), ["naive", "ewc"])
    chunks = []
    with pytest.raises(Interrupted):  # naive finishes, ewc stops after 2 of its chunks
        runner.execute(
            plan, run_dir=tmp_path, should_stop=lambda: len(chunks) == 6, on_steps=chunks.append
        )
    steps = []
    runner.execute(plan, run_dir=tmp_path, resume=True, on_steps=steps.append)
    assert steps[:2] == [plan.steps(plan.methods[0]), sum(chunks[4:])]
    assert sum(steps) == plan.total_steps
