"""A minimal WebSocket client (RFC 6455) for ``switchboard bench``: an asyncio Protocol that
parses every frame of a received chunk in one pass and hands text payloads to a callback.

aiohttp's client costs a few futures and a queue round trip per frame; at tens of thousands
of deliveries a second that made the load generator, not the server, the limit
(docs/benchmarks.md). This one does only what the bench needs: the handshake (a refusal is
reported with the status and the contract's error body), unfragmented text frames, pings
answered, the close handshake. Frames it sends are masked with a random key, as the RFC
requires of clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
import time
from collections.abc import Callable
from typing import cast

import orjson
from yarl import URL

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The upgrade failed; the message is the reason (``429 TOO_MANY_CONNECTIONS``)."""


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    stream = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ stream).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class BenchSocket(asyncio.Protocol):
    """One connection. ``on_text(payload, received_ns)`` gets each text frame's bytes and the
    monotonic time its chunk arrived; ``closed`` resolves to the close code (None when the
    connection dropped without one)."""

    def __init__(self, request: bytes, key: bytes, on_text: Callable[[bytes, int], None]) -> None:
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self.close_sent = False

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self.opened.done():
            self._handshake()
            if not self.opened.done() or self.opened.exception() is not None:
                return
        self._frames(time.monotonic_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- parsing ------------------------------------------------------------------------------
    def _handshake(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        parts = head[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            if len(buf) < end + 4 + length:
                return  # the error body is not all here yet
            self.opened.set_exception(HandshakeError(_refusal(status, bytes(buf[end + 4:end + 4 + length]))))
            assert self.transport is not None
            self.transport.close()
            return
        if headers.get("sec-websocket-accept", "").encode() != self._accept:
            self.opened.set_exception(HandshakeError("bad Sec-WebSocket-Accept"))
            assert self.transport is not None
            self.transport.close()
            return
        del buf[:end + 4]
        self.opened.set_result(None)

    def _frames(self, now: int) -> None:
        buf, pos, size = self._buf, 0, len(self._buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == TEXT and b0 & 0x80:
                self.on_text(bytes(buf[pos + head:end]), now)
            elif opcode == PING:
                self.send(PONG, bytes(buf[pos + head:end]))
            elif opcode == CLOSE:
                payload = bytes(buf[pos + head:end])
                self._on_close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
                return
            elif opcode != PONG:  # fragmented or binary: nothing the bench expects
                self._on_close(1003)
                return
            pos = end
        del buf[:pos]

    def _on_close(self, code: int) -> None:
        if not self.close_sent:
            self.send(CLOSE, struct.pack("!H", 1000))
        if not self.closed.done():
            self.closed.set_result(code)
        assert self.transport is not None
        self.transport.close()

    # --- sending ------------------------------------------------------------------------------
    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        if opcode == CLOSE:
            self.close_sent = True
        self.transport.write(encode_frame(opcode, payload))

    async def drain(self) -> None:
        await self._writable.wait()

    async def close(self, timeout: float = 5.0) -> None:
        """The close handshake: send 1000, wait for the server's close (or give up)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.send(CLOSE, struct.pack("!H", 1000))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.transport.abort()


def _refusal(status: int, body: bytes) -> str:
    try:
        error = orjson.loads(body)["error"]
        return f"{status} {error['code']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"


async def connect(url: str, token: str, on_text: Callable[[bytes, int], None], *,
                  query: dict[str, str] | None = None) -> BenchSocket:
    """Open a connection and complete the handshake (HandshakeError, OSError on failure)."""
    parsed = URL(url).update_query(query or {})
    secure = parsed.scheme == "wss"
    host, port = parsed.host or "127.0.0.1", parsed.port or (443 if secure else 80)
    key = base64.b64encode(os.urandom(16))
    request = (f"GET {parsed.raw_path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    sock = BenchSocket(request, key, on_text)
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: sock, host, port, ssl=ssl.create_default_context() if secure else None)
    try:
        await sock.opened
    except BaseException:
        transport.close()
        raise
    return sock
