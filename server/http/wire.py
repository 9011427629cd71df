"""RFC 6455 rules aiohttp does not keep on its own, for the WebSocket endpoint and the
conformance echo alike: a close code that is never sent on the wire (1005, 1006, 1015) is
answered with 1002, not 1000 (Autobahn case 7.9.5); an unmasked client frame (section 5.1) is
refused with 1002 before aiohttp's reader sees it (:class:`MaskGuard`)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from ..protocol import CloseCode
from .handshake import HeaderDeadline

log = structlog.get_logger("server.ws")


#: close codes that must never be on the wire (RFC 6455 7.4.1). aiohttp's reader refuses 1005
#: and 1015 itself (1002) but hands a received 1006 on; its autoclose would answer it with 1000
_NEVER_SENT = frozenset({1005, 1006, 1015})


async def answer_close(ws: web.WebSocketResponse, msg: Any) -> None:
    """Answer the client's close frame (``autoclose`` is off so that this is the only answer):
    1002 for a code no endpoint may send (Autobahn case 7.9.5), else 1000."""
    code = CloseCode.PROTOCOL_ERROR if msg.data in _NEVER_SENT else CloseCode.NORMAL
    await ws.close(code=int(code), drain=False)


class MaskGuard(asyncio.Protocol):
    """Refuses unmasked client frames (RFC 6455 5.1: close 1002), which aiohttp accepts and whose
    mask bit its reader does not expose. Installed between an upgraded connection's socket and
    aiohttp's protocol (behind our listener's ``HeaderDeadline``, else with asyncio's public
    ``transport.set_protocol``), it follows the frame headers
    of the client's bytes and passes them on unchanged; at the first unmasked frame it writes a
    close 1002 and closes the socket, and that frame never reaches aiohttp. Bytes that arrived
    together with the upgrade request (before the 101) are not seen: a client cannot have read
    the 101 by then."""

    _CLOSE = b"\x88\x10\x03\xeaunmasked frame"  # close 1002, 14-byte reason
    __slots__ = ("_transport", "_inner", "_head", "_skip", "refused")  # one per connection

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self._transport = transport
        self._inner = inner
        self._head = bytearray()  # the current frame's header, while incomplete
        self._skip = 0  # payload bytes of the current frame still to come
        self.refused = False

    @classmethod
    def install(cls, request: web.Request) -> "MaskGuard | None":
        transport = request.transport  # uvloop's is not an asyncio.Transport: no isinstance
        if transport is None or transport.is_closing():
            return None
        front = transport.get_protocol()
        if isinstance(front, HeaderDeadline):  # our listener's: the guard goes behind it
            return front.insert(lambda inner: cls(transport, inner))  # type: ignore[arg-type]
        guard = cls(transport, front)  # type: ignore[arg-type]
        transport.set_protocol(guard)
        return guard

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        head, n, pos, start = self._head, len(data), 0, 0
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            if not head and pos + 2 <= n:  # a header that starts here: read it at once
                size = data[pos + 1]
                if not size & 0x80:
                    self._refuse(data[:pos])
                    return
                size &= 0x7F
                ext = 2 if size == 126 else 8 if size == 127 else 0
                if pos + 6 + ext <= n:
                    if ext:
                        size = int.from_bytes(data[pos + 2:pos + 2 + ext], "big")
                    self._skip = size
                    pos += 6 + ext
                    continue
            # a header split between two reads: byte by byte
            if not head:
                start = pos
            head.append(data[pos])
            pos += 1
            if len(head) < 2:
                continue
            if not head[1] & 0x80:
                self._refuse(data[:start])
                return
            ext = {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
            if len(head) == 2 + ext + 4:
                self._skip = int.from_bytes(head[2:2 + ext], "big") if ext else head[1] & 0x7F
                head.clear()
        self._inner.data_received(data)

    def _refuse(self, before: bytes) -> None:
        self.refused = True
        if before:
            self._inner.data_received(before)
        log.info("protocol_error", reason="unmasked client frame")
        self._transport.write(self._CLOSE)
        self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
