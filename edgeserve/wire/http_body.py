"""Reading an HTTP request body under a size limit, for every REST front door.

The limit is checked against ``Content-Length`` before reading, while streaming (a
chunked body has no length), and again after ``gzip``/``deflate`` decoding, so neither a
large body nor a small compressed bomb gets past it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from edgeserve.wire.errors import InvalidInput, PayloadTooLarge


async def read_limited_body(
    chunks: AsyncIterator[bytes],
    content_length: str | None,
    content_encoding: str | None,
    limit: int,
) -> bytes:
    """The (decoded) body, or ``PayloadTooLarge`` as soon as it passes ``limit`` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(f"body of {int(content_length)} bytes exceeds the limit of {limit}")
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    body = b"".join(parts)
    encoding = (content_encoding or "identity").lower()
    if encoding in ("gzip", "deflate"):
        return _decompress(body, encoding, limit)
    if encoding != "identity":
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}'")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        plain = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return plain
