"""Writing files atomically (the one writer every module uses), with one rule for their modes.

The rule: what a run writes for people and tools to read (datasets, rounds.jsonl,
summary.json, adapters, plots, checkpoints, TensorBoard logs) gets the mode any ``open()``
gives, ``0o666`` less the umask (0644 under the usual umask 022); secrets (private keys,
written by ``deploy.certs``) and a platform's private per-user/per-item parameters
(``clients.private_state``) stay 0600 and are never widened. ``tempfile.mkstemp`` creates
its file 0600, so an atomic writer must set the mode before the rename, or results end up
0600 next to 0644 files written by ``open()`` (as safetensors does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600
FALLBACK_UMASK = 0o022


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which races with other threads creating files); Linux's /proc, else the common default."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return FALLBACK_UMASK


def result_mode() -> int:
    """Mode of a result file: ``0o666`` less the umask, as ``open()`` would create it."""
    return 0o666 & ~umask()


def result_dir_mode() -> int:
    """Mode of a result folder: ``0o777`` less the umask (``tempfile.mkdtemp`` makes it 0700)."""
    return 0o777 & ~umask()


def set_result_modes(folder: Path) -> None:
    """Give every file directly in ``folder`` :func:`result_mode` (for writers that create their
    files 0600 themselves, as ``safetensors.save_file`` does)."""
    mode = result_mode()
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None, fsync: bool = False) -> None:
    """Write to a temp file in the same folder, set its mode, then ``os.replace``: readers never see
    half a file. ``mode`` defaults to :func:`result_mode` (a secret passes :data:`SECRET_MODE`: the temp
    file is 0600 from its creation, so a key is never briefly readable by others); ``fsync`` makes the
    bytes and then the rename itself durable (a power cut leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, result_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, fsync: bool = False) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, fsync=fsync)


def fsync_dir(folder: Path) -> None:
    """Make the renames and creations in ``folder`` durable (POSIX keeps them in the folder's own inode)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
