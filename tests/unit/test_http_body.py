"""Reading a REST body: limits, compressed streams that must end, and clients that leave."""

import asyncio
import gzip
import zlib

import pytest

from edgeserve.wire.errors import ClientDisconnected, InvalidInput, PayloadTooLarge
from edgeserve.wire.http_body import asgi_body_chunks, read_limited_body

PLAIN = b'{"inputs": []}' * 20


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def _read(body: bytes, encoding: str | None = None, limit: int = 1 << 20) -> bytes:
    return asyncio.run(read_limited_body(_chunks(body), str(len(body)), encoding, limit))


def test_a_gzip_body_decodes():
    assert _read(gzip.compress(PLAIN), "gzip") == PLAIN


@pytest.mark.parametrize("cut", [1, 4, 8], ids=["crc-byte", "crc", "trailer"])
def test_a_gzip_body_without_its_trailer_is_refused(cut):
    with pytest.raises(InvalidInput, match="gzip body is truncated"):
        _read(gzip.compress(PLAIN)[:-cut], "gzip")


def test_a_deflate_body_cut_short_is_refused():
    with pytest.raises(InvalidInput, match="deflate body is truncated"):
        _read(zlib.compress(PLAIN)[:-3], "deflate")


def test_an_empty_gzip_body_is_refused():
    with pytest.raises(InvalidInput, match="truncated"):
        _read(b"", "gzip")


def test_a_gzip_body_of_several_members_decodes_whole():
    assert _read(gzip.compress(PLAIN) + gzip.compress(PLAIN), "gzip") == PLAIN * 2


def test_bytes_after_a_deflate_stream_are_refused():
    with pytest.raises(InvalidInput, match="3 bytes after the end of the deflate stream"):
        _read(zlib.compress(PLAIN) + b"xyz", "deflate")


def test_garbage_called_deflate_is_refused():
    with pytest.raises(InvalidInput, match="not valid deflate"):
        _read(b"\xff" * 40, "deflate")


def test_a_compression_bomb_stops_at_the_limit():
    with pytest.raises(PayloadTooLarge, match="decompressed body exceeds"):
        _read(gzip.compress(b"\0" * (1 << 20)), "gzip", limit=4096)


def test_an_unsupported_encoding_is_quoted_shortly():
    with pytest.raises(InvalidInput, match="unsupported Content-Encoding") as refused:
        _read(PLAIN, "x" * 100_000)
    assert len(refused.value.message) < 300


def test_a_client_that_disconnects_mid_body_raises_client_disconnected():
    messages = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return messages.pop(0)

    async def scenario() -> bytes:
        return await read_limited_body(asgi_body_chunks(receive), "100", None, 1 << 20)

    with pytest.raises(ClientDisconnected, match="client disconnected"):
        asyncio.run(scenario())
    assert issubclass(ClientDisconnected, InvalidInput)  # a 400 refusal, counted as one


def test_asgi_chunks_end_with_the_last_message():
    messages = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]

    async def receive():
        return messages.pop(0)

    async def scenario() -> bytes:
        return await read_limited_body(asgi_body_chunks(receive), None, None, 1 << 20)

    assert asyncio.run(scenario()) == b"abcd"
