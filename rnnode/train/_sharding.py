"""Data-parallel training with JAX's own sharding machinery.

The batch axis of the data is split over a 1-D `jax.sharding.Mesh` (axis name
`"batch"`) with `NamedSharding`; parameters and optimiser state are replicated.
A `jax.jit`-compiled training step on such inputs is partitioned by XLA, which
inserts the gradient all-reduce itself: no `pmap`, no hand-written `psum`.

Across hosts, `initialize_distributed` calls `jax.distributed.initialize`; then
`jax.devices()` lists every process's devices, each host loads its own slice of
the data (`process_slice`) and `global_batch` assembles the global array from the
per-host pieces. Checkpoints are written by process 0 only (`is_main_process`)
and read by all.

With `mesh=None` (what `make_mesh` returns for one device) every function here
hands its input back unchanged, so the single-device path is untouched.
"""

import os
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import PyTree

BATCH_AXIS = "batch"
"""The name of the mesh axis the batch is split over."""

_FORCE_HINT = (
    "to test several devices on one CPU, start Python with "
    "`XLA_FLAGS=--xla_force_host_platform_device_count=K JAX_PLATFORMS=cpu` "
    "(or call `jax.config.update('jax_num_cpu_devices', K)` before JAX is used)"
)


# --------------------------------------------------------------------- meshes


def make_mesh(devices: "str | int | Sequence[jax.Device] | None") -> Mesh | None:
    """The 1-D device mesh (axis `"batch"`) that data-parallel training runs on.

    **Arguments:**

    - `devices`: `None` or `1`: a single device, returns `None` (nothing is
      sharded, nothing changes); `"all"`: every device of `jax.devices()` (across
      all processes once `initialize_distributed` has run); an int `k`: the first
      `k` devices; or an explicit sequence of devices.

    **Returns:** a `Mesh`, or `None` when only one device is used.
    """
    if devices is None or (
        isinstance(devices, (int, np.integer))
        and not isinstance(devices, bool)
        and devices == 1
    ):
        return None
    available = jax.devices()
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "all":
            chosen = list(available)
        elif text.isdigit():
            return make_mesh(int(text))
        else:
            raise ValueError(
                f"`devices` must be 'all', a positive int or None, got {devices!r}"
            )
    elif isinstance(devices, bool) or not isinstance(
        devices, (int, np.integer, Sequence)
    ):
        raise ValueError(
            f"`devices` must be 'all', a positive int or None, got {devices!r}"
        )
    elif isinstance(devices, (int, np.integer)):
        k = int(devices)
        if k < 1:
            raise ValueError(f"`devices` must be at least 1, got {k}")
        if k > len(available):
            raise ValueError(
                f"{k} devices requested but only {len(available)} "
                f"exist (platform {available[0].platform}); use `devices: all` "
                f"or fewer, or {_FORCE_HINT}"
            )
        chosen = list(available[:k])
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("`devices` is an empty sequence")
    if len(chosen) == 1:
        return None
    if jax.process_count() > 1:
        missing = {d.process_index for d in available} - {
            d.process_index for d in chosen
        }
        if missing:
            raise ValueError(
                f"with {jax.process_count()} processes the mesh must include devices "
                f"of every process (none of processes {sorted(missing)}); use "
                "`devices: all`"
            )
    return Mesh(np.array(chosen), (BATCH_AXIS,))


def num_devices(mesh: Mesh | None) -> int:
    """How many devices the batch is split over (1 for `mesh=None`)."""
    return 1 if mesh is None else mesh.size


def batch_sharding(mesh: Mesh, *, axis: int = 1) -> NamedSharding:
    """`NamedSharding` splitting array axis `axis` over the mesh (other axes
    replicated): `P(None, "batch")` for time-major data, `P("batch")` for axis 0."""
    if axis < 0:
        raise ValueError(f"`axis` must be non-negative, got {axis}")
    return NamedSharding(mesh, P(*([None] * axis), BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """`NamedSharding(mesh, P())`: a full copy on every device."""
    return NamedSharding(mesh, P())


# ---------------------------------------------------------- placing pytrees


def _is_data(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _check_divisible(path, shape, axis, n, what):
    if shape[axis] % n != 0:
        name = jax.tree_util.keystr(path) or "the array"
        raise ValueError(
            f"{what} size {shape[axis]} of {name} (shape {shape}, axis {axis}) is not "
            f"divisible by the {n} devices of the mesh; choose a batch size that is "
            f"a multiple of {n} (e.g. {max(n, shape[axis] // n * n)}) or use fewer "
            "devices"
        )


def shard_batch(mesh: Mesh | None, tree: PyTree, *, axis: int = 1) -> PyTree:
    """Place every array leaf of `tree` with its batch axis split over `mesh`.

    **Arguments:**

    - `mesh`: from `make_mesh`; `None` returns `tree` unchanged.
    - `tree`: a pytree of arrays (NumPy or JAX), e.g. `(xs, ys, weights)`.
    - `axis`: the batch axis: `1` for time-major `(time, batch, ...)` data (the
      default), `0` for batch-major data.

    Leaves with no `axis` (e.g. time weights of shape `(time,)`) are replicated;
    non-array leaves are left as they are. Every process must pass the same
    global data (use `global_batch` when each host holds only its own slice).

    **Raises:** `ValueError` if a batch size is not divisible by the number of
    devices.
    """
    if mesh is None:
        return tree
    split = batch_sharding(mesh, axis=axis)
    repl = replicated_sharding(mesh)

    def place(path, x):
        if not _is_data(x):
            return x
        if np.ndim(x) <= axis:
            return jax.device_put(x, repl)
        _check_divisible(path, np.shape(x), axis, mesh.size, "batch")
        return jax.device_put(x, split)

    return jax.tree_util.tree_map_with_path(place, tree)


def replicate(mesh: Mesh | None, tree: PyTree) -> PyTree:
    """Put a full copy of every array leaf of `tree` (a model, optimiser state, …)
    on every device of `mesh`; other leaves are kept. `mesh=None`: unchanged."""
    if mesh is None:
        return tree
    arrays, static = eqx.partition(tree, _is_data)
    arrays = jax.device_put(arrays, replicated_sharding(mesh))
    return eqx.combine(arrays, static)


def global_batch(mesh: Mesh | None, local_tree: PyTree, *, axis: int = 1) -> PyTree:
    """Assemble global arrays from each process's own slice of the batch.

    Every process passes its slice (the rows `process_slice(N)` of the global
    batch along `axis`, all processes the same size); the result is the global
    batch split over `mesh` like `shard_batch`, built with
    `jax.make_array_from_process_local_data`. Leaves with no `axis` must be the
    same on every process and are replicated. In a single process this is
    `shard_batch`.
    """
    if mesh is None:
        return local_tree
    split = batch_sharding(mesh, axis=axis)
    repl = replicated_sharding(mesh)
    nproc = jax.process_count()
    local_devices = sum(
        d.process_index == jax.process_index() for d in mesh.devices.flat
    )

    def place(path, x):
        if not _is_data(x):
            return x
        x = np.asarray(x)
        if x.ndim <= axis:
            return jax.device_put(x, repl)
        _check_divisible(path, x.shape, axis, local_devices, "per-process batch")
        shape = list(x.shape)
        shape[axis] *= nproc
        return jax.make_array_from_process_local_data(split, x, tuple(shape))

    return jax.tree_util.tree_map_with_path(place, local_tree)


def to_numpy(tree: PyTree) -> PyTree:
    """Fetch every JAX array of `tree` as a NumPy array, gathering the pieces held
    by other processes when an array is split across hosts (every process must
    call this together in that case)."""

    def fetch(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


# ---------------------------------------------------------------- many hosts


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"${name} must be an integer, got {value!r}") from None
    return None


def _env_str(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> bool:
    """Join a multi-process (multi-host) JAX run via `jax.distributed.initialize`.

    Arguments left `None` are read from the environment: `RNNODE_COORDINATOR_ADDRESS`
    (`host:port` of process 0), `RNNODE_NUM_PROCESSES`, `RNNODE_PROCESS_ID`, or else
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. If no
    process count is found, or it is 1, this is a no-op (single process). Extra
    keyword arguments (e.g. `initialization_timeout`, `local_device_ids`) go to
    `jax.distributed.initialize`. Must run before JAX is used for anything else.

    **Returns:** `True` if running with several processes, else `False`.
    """
    coordinator_address = coordinator_address or _env_str(
        "RNNODE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"
    )
    if num_processes is None:
        num_processes = _env_int("RNNODE_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("RNNODE_PROCESS_ID", "JAX_PROCESS_ID")
    if num_processes is None or int(num_processes) == 1:
        if process_id not in (None, 0):
            raise ValueError(
                f"process id {process_id} given but the process count is "
                f"{num_processes}; set RNNODE_NUM_PROCESSES"
            )
        return False
    num_processes = int(num_processes)
    if num_processes < 1:
        raise ValueError(f"number of processes must be positive, got {num_processes}")
    missing = [
        name
        for name, value in [
            ("coordinator address (RNNODE_COORDINATOR_ADDRESS)", coordinator_address),
            ("process id (RNNODE_PROCESS_ID)", process_id),
        ]
        if value is None
    ]
    if missing:
        raise ValueError(
            f"a {num_processes}-process run needs the {' and the '.join(missing)}"
        )
    process_id = int(process_id)
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process id must be in [0, {num_processes}), got {process_id}"
        )
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (num_processes, process_id):
            raise RuntimeError(
                "jax.distributed is already initialised with "
                f"{jax.process_count()} processes (this one {jax.process_index()}), "
                f"not {num_processes} (this one {process_id})"
            )
        return True
    # Collectives between CPU processes need an implementation; gloo is the
    # default in recent JAX and ships with jaxlib (older versions default to none).
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - a JAX without the option
        pass
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )
    return True


def process_slice(
    n: int,
    process_index: int | None = None,
    process_count: int | None = None,
    *,
    drop_remainder: bool = False,
) -> slice:
    """The contiguous block of `range(n)` (e.g. sequences of the batch) that this
    process loads: block `process_index` of `process_count` equal blocks
    (defaults: `jax.process_index()`, `jax.process_count()`).

    **Raises:** `ValueError` if `n` is not divisible by `process_count`, unless
    `drop_remainder` (then the last `n % process_count` items are dropped).
    """
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, "
            f"{process_count}"
        )
    if n % process_count and not drop_remainder:
        raise ValueError(
            f"{n} items cannot be split evenly over {process_count} processes; use a "
            f"multiple of {process_count} or `drop_remainder=True`"
        )
    size = n // process_count
    return slice(process_index * size, (process_index + 1) * size)


def is_main_process() -> bool:
    """True on process 0, the one that writes checkpoints and logs."""
    return jax.process_index() == 0


def barrier(name: str = "rnnode") -> None:
    """Wait until every process reaches this point (no-op for one process); e.g.
    after process 0 has written a checkpoint, before the others read it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
