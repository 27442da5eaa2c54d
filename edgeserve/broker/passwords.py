"""Mosquitto 2.0 password hashes, made and checked in pure Python.

Enrolling a device must not need the ``mosquitto_passwd`` binary (the sync service may
run on a host without the broker package), so this module writes the broker's own
format: ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512 hash>`` with a
12-byte salt and a 64-byte hash, exactly what ``mosquitto_passwd`` 2.0 produces (101
iterations is its default; the tests check our hashes against the real broker and its
hashes against ours). The embedded broker checks passwords with ``verify``, so one
password file serves both brokers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from edgeserve.durable import write_private
from edgeserve.wire.errors import InvalidInput

ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
# Far above what the broker's own tool writes, low enough that a hostile file cannot
# make a login burn seconds of CPU.
MAX_ITERATIONS = 1_000_000


def generate_password() -> str:
    """A fresh random password (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$...`` hash of ``password`` as Mosquitto 2.0 stores it."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash; False for a mismatch or a bad hash."""
    try:
        iterations, salt, expected = _parse_hash(stored)
    except InvalidInput:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def read_password_file(path: Path) -> dict[str, str]:
    """``username -> hash`` from a Mosquitto password file; a missing file is empty."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    entries = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, stored = line.partition(":")
        if not sep or not username:
            raise InvalidInput(f"{path}:{number}: not a 'username:hash' line")
        entries[username] = stored
    return entries


def write_password_file(path: Path, entries: Mapping[str, str]) -> None:
    """Replace ``path`` atomically with ``username:hash`` lines, mode 0600."""
    for username in entries:
        if not username or ":" in username or any(c.isspace() for c in username):
            raise InvalidInput(f"username {username!r} cannot be stored in a password file")
    text = "".join(f"{username}:{stored}\n" for username, stored in sorted(entries.items()))
    write_private(path, text.encode())


def _parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        raise InvalidInput("not a Mosquitto $7$ password hash")
    iterations = int(parts[2])
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise InvalidInput(f"password hash iteration count {iterations} out of range")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except binascii.Error as exc:
        raise InvalidInput("password hash is not valid base64") from exc
    if not salt or not expected:
        raise InvalidInput("password hash has an empty salt or digest")
    return iterations, salt, expected


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
