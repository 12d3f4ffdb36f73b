"""Where arrays live: the member mesh over every process's devices, and the few collectives that
keep several JAX processes (multi-host, `jax.distributed`) in step.

One process is the common case and nothing here changes it. With several, every process runs the
same program: each places only its own devices' shards of the stacked states and data (built
identically on every process), host reads of sharded results gather them first, and process 0
alone writes files; decisions that must be the same everywhere (the sweep directory, whether to
stop) are taken on process 0 or agreed on by all.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from continual.types import TrainState


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins the processes of a multi-host job (`jax.distributed.initialize`); unset arguments are
    found by JAX (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, Kubernetes). Must run before JAX
    touches a device. ValueError (one line) when it cannot."""
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except ValueError as e:  # something JAX could neither be given nor find
        raise ValueError(
            f"--distributed: {_first_line(e)} (give --coordinator, --num-processes and "
            "--process-id, or start under SLURM, Open MPI or Kubernetes)"
        ) from None
    except Exception as e:  # TypeError, RuntimeError (e.g. no coordinator answered in time)
        raise ValueError(f"--distributed: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def available_bytes() -> int | None:
    """Memory a program can still use: the least any local device has left (bytes_limit less
    bytes_in_use), or on a CPU the host's MemAvailable; None when neither can be read."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    if all(s and "bytes_limit" in s for s in stats):
        return min(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def is_primary() -> bool:
    """Whether this is process 0, the one that writes files and prints."""
    return jax.process_index() == 0


def process_count() -> int:
    """How many processes the job has (1 unless --distributed)."""
    return jax.process_count()


def place(tree, sharding: NamedSharding):
    """Puts `tree`, whose values are the same on every process, on `sharding`. One process:
    `jax.device_put`. Several: each process builds only its own devices' shards from its host
    copy (arrays already spread over the processes are resharded)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(a))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return jax.device_put(a, sharding)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(tree):
    """NumPy copies of the leaves; a leaf sharded over several processes is gathered first, so
    every process must call this at the same point."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return multihost_utils.process_allgather(a, tiled=True)
        return np.asarray(a)

    return jax.tree.map(get, tree)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective when there are several)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.bool_(flag))).any())


def from_primary(value):
    """Process 0's `value` (anything JSON can hold) on every process."""
    if jax.process_count() == 1:
        return value
    text = json.dumps(value).encode() if is_primary() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    buf = np.frombuffer(text, np.uint8) if is_primary() else np.zeros(size, np.uint8)
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes().decode())


def barrier(name: str) -> None:
    """Waits until every process gets here."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def shard_members(states: TrainState) -> tuple[TrainState, NamedSharding, int]:
    """Places stacked states on every device of every process; returns them, their sharding and
    the real member count.

    Several members (a sweep): the member axis is padded to a multiple of the global device count
    (repeating member 0) and sharded over a one-axis mesh `member`. One member (a run): the
    states are replicated over a one-axis mesh `batch`, which each step's batch is sharded over
    (see batch_sharding): data parallel, the same code on one device.
    """
    devices = jax.devices()
    members = jax.tree.leaves(states)[0].shape[0]
    if members == 1:
        sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec())
        return place(states, sharding), sharding, members
    pad = -members % len(devices)
    if pad:
        states = jax.tree.map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), states
        )
    sharding = NamedSharding(Mesh(np.array(devices), ("member",)), PartitionSpec("member"))
    return place(states, sharding), sharding, members


def batch_sharding(sharding: NamedSharding, batch_size: int) -> NamedSharding | None:
    """How a single run's training batch is split over its mesh: the example axis over `batch`,
    when the batch size is a multiple of the device count; None (replicated) otherwise and in a
    sweep, whose members are what is split."""
    mesh = sharding.mesh
    if mesh.axis_names != ("batch",) or batch_size < 1 or batch_size % mesh.size:
        return None
    return NamedSharding(mesh, PartitionSpec("batch"))
