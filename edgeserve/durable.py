"""Durable small-file writes: how every part of edgeserve puts state and secrets on disk.

A file is written to a temporary name created with its final mode (a private key or a
password is never readable by others, not even for an instant), fsynced, renamed over
its target and the folder fsynced, so ``kill -9`` or a power cut leaves either the old
file or the complete new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a leftover temporary file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    """``write_atomic`` for secrets: readable by the owner only."""
    write_atomic(path, data, 0o600)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
