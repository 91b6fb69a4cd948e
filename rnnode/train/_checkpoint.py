"""Checkpoints: atomic, self-checking files holding a training state.

A checkpoint is one file `checkpoints/step-XXXXXXXX.ckpt`:

    b"RNNODECK"  |  header length (8 bytes, little-endian)  |  header (JSON)  |  payload

The header records the format version, the step, the config, the payload's
length and its SHA-256; the payload is `equinox.tree_serialise_leaves` of the
state (model, optimiser state, RNG key, …). Reading needs a "like" pytree of
the same structure (rebuilt from the config) and checks length and hash first,
so a truncated or corrupted file is detected and reported, never half-loaded.

Writing goes to a temporary file in the same directory, is flushed and
`fsync`ed, then `os.replace`d over the final name (atomic on POSIX), and the
directory is `fsync`ed: a run killed at any moment leaves either the old set of
checkpoints or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx

MAGIC = b"RNNODECK"
FORMAT = 1
_NAME = re.compile(r"^step-(\d{8,})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, corrupt, mismatched)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (and an older one used)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}.ckpt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every checkpoint file, newest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temporary file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    state: Any,
    *,
    meta: dict | None = None,
    keep: int = 2,
) -> Path:
    """Save `state` (a pytree) as the checkpoint of `step`; keep the newest `keep`.

    `meta` (JSON-serialisable: the config, elapsed time, …) goes in the header.
    """
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, state)
    payload = buf.getvalue()
    header = {
        "format": FORMAT,
        "step": int(step),
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "meta": meta or {},
    }
    head = json.dumps(header, sort_keys=True).encode()
    data = MAGIC + len(head).to_bytes(8, "little") + head + payload
    path = checkpoint_path(run_dir, step)
    atomic_write_bytes(path, data)
    for _, old in list_checkpoints(run_dir)[keep:]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def read_header(path: str | Path) -> tuple[dict, bytes]:
    """The header and the verified payload of a checkpoint file.

    **Raises:** `CheckpointError` if the file is truncated or corrupt.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if len(data) < len(MAGIC) + 8 or not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an rnnode checkpoint (bad magic bytes)")
    n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    if n > len(data) - start:
        raise CheckpointError(f"{path} is truncated (header cut off)")
    try:
        header = json.loads(data[start : start + n])
    except ValueError:
        raise CheckpointError(f"{path} has a corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown format {header!r:.60}")
    payload = data[start + n :]
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"{path} is truncated ({len(payload)} of {header.get('payload_bytes')} "
            "payload bytes)"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{path} is corrupt (checksum mismatch)")
    return header, payload


def load_checkpoint(path: str | Path, like: Any) -> tuple[dict, Any]:
    """`(header, state)` from a checkpoint, with `state` shaped like `like`."""
    header, payload = read_header(path)
    try:
        state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # noqa: BLE001 - any mismatch makes the file unusable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} does not match this config's model and optimiser ({msg})"
        ) from None
    return header, state


def load_latest(run_dir: str | Path, like: Any) -> tuple[dict, Any] | None:
    """The newest usable checkpoint of a run, skipping (with a warning) any that
    is truncated or corrupt; `None` if there is none."""
    found = list_checkpoints(run_dir)
    for i, (_, path) in enumerate(found):
        try:
            return load_checkpoint(path, like)
        except CheckpointError as e:
            rest = found[i + 1 :]
            then = (
                f"using the previous one, {rest[0][1].name}"
                if rest
                else "no older checkpoint is left"
            )
            warnings.warn(
                f"skipping checkpoint: {e}; {then}", CheckpointWarning, stacklevel=2
            )
    return None
