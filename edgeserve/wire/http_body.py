"""Reading an HTTP request body under a size limit, for every REST front door.

The limit is checked against ``Content-Length`` before reading, while streaming (a
chunked body has no length), and again after ``gzip``/``deflate`` decoding, so neither a
large body nor a small compressed bomb gets past it. A compressed body must end its
stream: one cut short (a gzip without its trailer) is refused, not decoded in part. A
client that leaves mid-body raises ``ClientDisconnected``, a refusal like any other
rather than a failure of the server.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from edgeserve.wire.errors import ClientDisconnected, InvalidInput, PayloadTooLarge, shown

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def asgi_body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body of an ASGI HTTP request, chunk by chunk, from its ``receive`` callable."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected before sending the whole body")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_asgi_body(receive: Receive, headers: Mapping[bytes, bytes], limit: int) -> bytes:
    """An ASGI request's (decoded) body under ``limit``, from its lowercase byte headers."""
    length = headers.get(b"content-length")
    encoding = headers.get(b"content-encoding")
    return await read_limited_body(
        asgi_body_chunks(receive),
        length.decode("latin-1") if length is not None else None,
        encoding.decode("latin-1") if encoding is not None else None,
        limit,
    )


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
        raise InvalidInput(f"unsupported Content-Encoding '{shown(encoding)}'")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded; a gzip body may hold several members, as RFC 1952 allows."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    plain: list[bytes] = []
    size = 0
    rest = body
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            chunk = decompressor.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        plain.append(chunk)
        if not decompressor.eof:
            raise InvalidInput(f"{encoding} body is truncated: its stream does not end")
        rest = decompressor.unused_data
        if not rest:
            return b"".join(plain)
        if encoding != "gzip":
            raise InvalidInput(f"{len(rest)} bytes after the end of the {encoding} stream")
