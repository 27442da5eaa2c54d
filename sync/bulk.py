"""Large payloads published where any static HTTP server (nginx, a CDN) can serve them.

Control stays on MQTT, bulk bytes leave it: a payload of ``min_bytes`` or more is copied
into ``root`` under its content address, ``<sha[:2]>/<sha>``, and its manifest names
``<base_url>/<sha[:2]>/<sha>``. The server needs no knowledge of edgeserve: it serves
immutable files, answers Range requests, and may be cached by anything in between,
because a file's name is the hash of its bytes. Devices still check every chunk against
the signed manifest, so the host is trusted with availability only, never integrity.

A copy, not a hard link: the folder is an export that an operator may sync to a CDN or
that a web server may be able to write to, and damage there must not reach the store
the MQTT path falls back to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sync.artifacts import check_sha256


class BulkPublisher:
    """Publishes payloads of ``min_bytes`` or more under ``root``, served at ``base_url``."""

    def __init__(self, root: Path, base_url: str, min_bytes: int) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self.min_bytes = min_bytes
        root.mkdir(parents=True, exist_ok=True)

    def wants(self, size: int) -> bool:
        return size >= self.min_bytes

    def relative(self, sha: str) -> str:
        return f"{check_sha256(sha)[:2]}/{sha}"

    def url(self, sha: str) -> str:
        return f"{self.base_url}/{self.relative(sha)}"

    def path(self, sha: str) -> Path:
        return self.root / self.relative(sha)

    def publish(self, source: Path, sha: str) -> str:
        """Copy ``source`` (the payload ``sha``) into place unless it is there; its URL.

        The copy is written under a temporary name and renamed, so the server never
        serves a half-written file under a payload's name.
        """
        target = self.path(sha)
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            return self.url(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            # Static servers run as another user: the export must be world-readable.
            os.chmod(name, 0o644)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)
        return self.url(sha)


def bulk_publisher(
    bulk_dir: Path | None, base_url: str | None, min_bytes: int
) -> BulkPublisher | None:
    """The publisher the configuration asks for, or None when bulk HTTP is off."""
    if bulk_dir is None or base_url is None:
        return None
    return BulkPublisher(bulk_dir, base_url, min_bytes)
