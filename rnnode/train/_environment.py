"""Where a run ran: the versions of rnnode and the libraries it computes with,
the backend and devices, the dtype and seed, and the git commit of the working
directory. Recorded under `"environment"` in `summary.json` and `eval.json`,
printed first by `rnnode train`."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import jax

from . import _sharding

PACKAGES = ("rnnode", "jax", "jaxlib", "equinox", "diffrax", "optax")
"""The packages whose versions are recorded."""


def environment(*, dtype: str, seed: int, mesh=None) -> dict:
    """The environment of a run on `mesh` (`None`: one device).

    **Arguments:**

    - `dtype`, `seed`: the run's `train.dtype` and `train.seed`.
    - `mesh`: the data-parallel mesh, or `None` for a single-device run.

    **Returns:** a JSON-ready dict: `versions` (package to version, `None` if not
    installed), `python`, `backend`, `device_kind`, `devices` (how many devices
    took part, over all processes), `processes`, `dtype`, `seed`, `git_commit`
    and `git_dirty` (`None` outside a git checkout).
    """
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    commit, dirty = _git_state(os.getcwd())
    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": _sharding.num_devices(mesh),
        "processes": len({d.process_index for d in devices}),
        "dtype": dtype,
        "seed": seed,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def format_environment(env: dict) -> str:
    """Two lines for a terminal: the versions; the devices, dtype, seed and
    commit."""
    v = env.get("versions", {})
    first = ", ".join(f"{name} {v.get(name)}" for name in PACKAGES if name in v)
    n, p = env.get("devices"), env.get("processes")
    commit = env.get("git_commit")
    where = (
        "not a git checkout"
        if commit is None
        else f"git {commit[:12]}"
        + (" (uncommitted changes)" if env["git_dirty"] else "")
    )
    second = (
        f"{env.get('backend')} ({env.get('device_kind')}), {n} device"
        f"{'' if n == 1 else 's'}, {p} process{'' if p == 1 else 'es'}; "
        f"{env.get('dtype')}, seed {env.get('seed')}; {where}"
    )
    return f"{first}\n{second}"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state(directory: str) -> tuple[str | None, bool | None]:
    """`(commit, has uncommitted changes)` of the git checkout containing
    `directory`; `(None, None)` if there is none, or git is missing or fails."""
    try:
        commit = _git(directory, "rev-parse", "--verify", "HEAD")
        if commit is None:
            return None, None
        status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, None if status is None else bool(status)


def _git(directory: str, *args: str) -> str | None:
    done = subprocess.run(
        ["git", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None
