"""Multi-host sweeps: two real JAX processes on this machine (jax.distributed over localhost, two
CPU devices each) stop together when only one of them is signalled, resume from their shared
checkpoint, write one copy of the outputs and give the numbers of one process."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sweep import tiny_config

from continual.cli import main

ROOT = Path(__file__).resolve().parent.parent

# 3 members on 2 x 2 = 4 devices: padded to 4, one member per device, two per process.
SWEEP = [
    "sweep",
    "split_blobs",
    "--method",
    "ewc",
    "--grid",
    "regularisers.ewc.strength=1:100:3",
    "--quiet",
    "--no-plots",
]

# One process of the job: the tiny split_blobs config of test_sweep; a process other than 0
# fails the moment it tries to write a result file.
PROCESS = """
import sys
sys.path.insert(0, "tests")
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
from test_sweep import tiny_config
from continual import results
from continual.experiments import split_blobs
from continual.cli import main
split_blobs.get_config = lambda arg=None: tiny_config()
if sys.argv[sys.argv.index("--process-id") + 1] != "0":
    def refuse(path, text):
        raise AssertionError(f"process 1 wrote {path}")
    results.write_atomic = refuse
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    """A free port below the ephemeral range (32768 and up on Linux and macOS): the system does
    not hand such a port to another socket before the coordinator binds it."""
    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 20000-32767")


def launch(argv: list[str], cache: Path, fault: str | None = None) -> list:
    """Runs `continual <argv> --distributed` as processes 0 and 1 of one job; `fault` (a
    CONTINUAL_FAULT value) goes to process 1 only. Returns (process, stdout, stderr) of each;
    both are killed if either is still running after 240 s."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "CONTINUAL_FAULT" and "proxy" not in k.lower()  # loopback only: no proxies
    }
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        CONTINUAL_CACHE=str(cache),
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # not every interface
    )
    procs = []
    try:
        for i in range(2):
            flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}"]
            flags += ["--num-processes", "2", "--process-id", str(i)]
            extra = {"CONTINUAL_FAULT": fault} if fault and i == 1 else {}
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", PROCESS, *argv, *flags],
                    cwd=ROOT,
                    env={**env, **extra},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        return [(p, *p.communicate(timeout=240)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def member_results(sweep_dir: Path) -> dict:
    out = {}
    for path in sorted((sweep_dir / "members").glob("*/*/results.json")):
        r = json.loads(path.read_text())
        r.pop("timing")
        out[str(path.relative_to(sweep_dir))] = r
    return out


def assert_same_numbers(a: dict, b: dict) -> None:
    """Equal structure and strings; numbers equal to 1e-5 (another device count may sum in
    another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b)
        for k in a:
            assert_same_numbers(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_numbers(x, y)
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(b, a, atol=1e-5)
    else:
        assert a == b


def files(sweep_dir: Path) -> list[str]:
    """The sweep's files, checkpoints aside (orbax names some of its files by process)."""
    return sorted(
        str(p.relative_to(sweep_dir))
        for p in sweep_dir.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweep in this one process, on one device."""
    from continual.experiments import split_blobs

    out = tmp_path_factory.mktemp("one")
    mp = pytest.MonkeyPatch()
    mp.setattr(split_blobs, "get_config", lambda arg=None: tiny_config())
    mp.setenv("CONTINUAL_CACHE", "off")
    try:
        assert main([*SWEEP, "--out", str(out), "--name", "one"]) == 0
    finally:
        mp.undo()
    return out / "split_blobs" / "one"


@pytest.mark.slow
def test_two_processes_stop_together_resume_and_give_the_numbers_of_one(reference, tmp_path):
    cache = tmp_path / "cache"  # shared by the two jobs: the second compiles nothing
    argv = [*SWEEP, "--out", str(tmp_path / "runs"), "--name", "x"]
    # Process 1 alone is sent SIGTERM after its first chunk: both checkpoint at the end of the
    # first task and stop there.
    (p0, out0, err0), (p1, out1, err1) = launch(argv, cache, fault="chunk:1:TERM")
    assert p1.returncode == 143, err1[-3000:]
    assert p0.returncode == 130, err0[-3000:]
    assert "stopped after task" in err0 and "another process was signalled" in err0
    assert "Resume with: the same command with --resume on every process" in err0
    assert "stopped after task" not in err1  # process 0 alone reports
    sweep_dir = tmp_path / "runs" / "split_blobs" / "x"
    assert not (sweep_dir / "members").exists()
    (folder,) = (sweep_dir / "checkpoints").iterdir()  # the one program's
    assert [p.name for p in folder.iterdir()] == ["40"]
    # The same command with --resume: both restore the checkpoint onto their shards and finish.
    (p0, out0, err0), (p1, out1, err1) = launch([*argv, "--resume"], cache)
    assert p0.returncode == 0, err0[-3000:]
    assert p1.returncode == 0, err1[-3000:]
    assert "warning" not in (err0 + err1).lower(), err0 + err1
    # Process 0 prints the table; process 1 prints nothing of its own (gloo's connection lines
    # come from C++) and never writes a result file (PROCESS makes that fail).
    assert "strength=10 " in out0 and "sweep directory:" in out0
    assert "sweep directory:" not in out1 and "±" not in out1
    assert [p.name for p in (tmp_path / "runs" / "split_blobs").iterdir()] == ["x"]
    assert files(sweep_dir) == files(reference)  # one copy of everything a sweep writes
    assert len(member_results(sweep_dir)) == 3
    assert_same_numbers(member_results(reference), member_results(sweep_dir))
    doc, ref = (json.loads((d / "sweep.json").read_text()) for d in (sweep_dir, reference))
    assert_same_numbers(ref, doc)
    steps = sorted(p.name for p in (sweep_dir / "checkpoints" / folder.name).iterdir())
    assert steps == sorted(p.name for p in (reference / "checkpoints" / folder.name).iterdir())


def test_process_flags_need_distributed(capsys, tmp_path):
    argv = [*SWEEP, "--out", str(tmp_path / "runs"), "--process-id", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need --distributed" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_distributed_without_a_coordinator_is_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_COORDINATOR", "SLURM_", "OMPI_", "PMI_", "KUBERNETES_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "continual.cli", *SWEEP, "--distributed"],
        cwd=tmp_path,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--coordinator" in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())
