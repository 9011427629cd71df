"""One client connection: identity, rooms, a bounded outbound queue and its writer task.

Only the handler task in ``ws.py`` reads from the socket; everything else sends by calling
:meth:`Connection.send`, which never waits. When nothing is queued and the socket's transport
buffer is under its high-water mark, ``send`` writes the finished frame to the transport at
once (no task switch per recipient: the fan-out's cost); otherwise it appends to the queue, which
a writer task drains, awaiting the socket (started when a frame is queued, ended when the queue
is empty: an idle connection holds no task of its own). A connection whose queue passes its
caps, or whose pending write outlives ``server.write_timeout`` (checked by the hub's sweeper),
is closed with 4008 and the rest of the server never waits for it.

The kernel's own send buffer is held to ``KERNEL_UNSENT`` bytes not yet sent (TCP_NOTSENT_LOWAT):
left to autotune, it takes up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB on Linux) from a client
that does not read, unseen by the queue's caps, before the queue even begins to fill.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .protocol import CloseCode, new_id, text_frame

if TYPE_CHECKING:
    from .identity import User

_TEXT = WSMsgType.TEXT
#: most bytes written to a connection's socket that the kernel holds unsent (bytes in flight,
#: bounded by the peer's window, are not counted): the rest waits in this process, counted
KERNEL_UNSENT = 65536
_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS


def _limit_kernel_unsent(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or _NOTSENT_LOWAT is None or sock.family not in (socket.AF_INET,
                                                                     socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, KERNEL_UNSENT)
    except OSError:  # closed already, or a kernel without the option
        pass


class Connection:
    __slots__ = (
        "id", "user", "ws", "remote", "log", "rooms", "connected_at", "expires_at",
        "last_activity", "write_started", "closing", "close_code", "_queue", "_queued_bytes",
        "_max_bytes", "_max_messages", "_writer", "_expiry_timer", "invalid_frames",
        "state", "request", "_socket", "_transport", "_high_water",
    )

    def __init__(self, ws: web.WebSocketResponse, user: "User", *, remote: str, log: Any,
                 max_bytes: int, max_messages: int, request: web.Request | None = None) -> None:
        self.id = new_id()
        self.user = user
        self.ws = ws
        self.remote = remote
        self.log = log
        self.request = request
        self.rooms: set[str] = set()
        self.connected_at = time.time()
        self.expires_at: float | None = None
        self.last_activity = time.monotonic()
        self.write_started = 0.0  # monotonic time a write began; 0 when none is pending
        self.closing = False
        self.close_code: int | None = None
        self.invalid_frames = 0
        #: free per-connection state for plugins, keyed by plugin name
        self.state: dict[str, Any] = {}
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._writer: asyncio.Task[None] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        # set by start(): the socket's transport; the same when frames may be written straight
        # to it
        self._socket: asyncio.BaseTransport | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._high_water = 0

    # --- outbound -------------------------------------------------------------------------
    def start(self) -> None:
        transport = self.request.transport if self.request is not None else None
        if transport is not None:
            self._socket = transport
            _limit_kernel_unsent(transport)
        # direct writes need uncompressed frames; with permessage-deflate aiohttp frames them
        if transport is not None and not self.ws.compress:
            self._transport = transport  # type: ignore[assignment]
            self._high_water = transport.get_write_buffer_limits()[1]

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def send(self, payload: bytes, *, droppable: bool = False, framed: bytes | None = None) -> bool:
        """Send an encoded frame; never waits. Returns False when it was not sent or queued.

        ``framed`` is ``payload`` already made a WebSocket frame (``protocol.text_frame``), for
        fan-outs that frame once for all recipients. Over the caps, a ``droppable`` frame
        (typing indicators) is dropped; any other closes this connection as a slow consumer
        (4008).
        """
        if self.closing:
            return False
        if self._socket is not None and self._socket.is_closing():
            # the peer is gone (reset, or the socket failed): the read loop is about to clean
            # up; writing would only make asyncio warn, queuing would end as a false 4008
            return False
        transport = self._transport
        if (transport is not None and payload and not self._queue and not self.write_started
                and not self.ws.closed and transport.get_write_buffer_size() < self._high_water):
            transport.write(framed if framed is not None else text_frame(payload))
            return True
        size = len(payload)
        if self._queued_bytes + size > self._max_bytes or len(self._queue) >= self._max_messages:
            if droppable:
                return False
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue overflowed")
            return False
        self._queue.append(payload)
        self._queued_bytes += size
        writer = self._writer
        if writer is None or writer.done():  # an idle connection has no writer task
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        return True

    async def _write_loop(self) -> None:
        """Write the queue out, then end: ``send`` starts it again for the next queued frame."""
        ws, queue = self.ws, self._queue
        # aiohttp waits for the socket only every 256 KiB written: wait after each frame while
        # the transport is over its high-water mark, so what this connection holds unsent stays
        # within the queue's caps plus that mark
        drain = self.request.writer.drain if self.request is not None else None
        try:
            while queue:
                payload = queue.popleft()
                self._queued_bytes -= len(payload)
                self.write_started = time.monotonic()
                if payload:
                    await ws.send_frame(payload, _TEXT)
                    if drain is not None:
                        await drain()
                else:  # the hub's heartbeat marker
                    await ws.ping()
                self.write_started = 0.0
        except (ConnectionError, RuntimeError):
            # the peer went away; the read loop sees it too and cleans up
            return
        except asyncio.CancelledError:
            return

    # --- closing --------------------------------------------------------------------------
    def close(self, code: int, reason: str = "") -> None:
        """Close from any task: stop queuing, drop what is queued, send the close frame from a
        task of its own so the caller never waits."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._queue.clear()
        self._queued_bytes = 0
        self.cancel_expiry()
        self.log.info("connection_closing", code=int(code), reason=reason)
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        writer = self._writer
        if writer is not None and not writer.done() and self.write_started:
            # a write is stuck on a peer that does not read: abandon it
            writer.cancel()
        try:
            async with asyncio.timeout(5.0):
                await self.ws.close(code=int(code), message=reason.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = self.request.transport if self.request is not None else None
            if transport is not None:
                transport.abort()

    async def finish(self) -> None:
        """Called by the handler once the read loop ended: stop the writer."""
        self.closing = True
        self.cancel_expiry()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass

    # --- token expiry ----------------------------------------------------------------------
    def schedule_expiry(self, expires_at: float | None) -> None:
        self.cancel_expiry()
        self.expires_at = expires_at
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry_timer = loop.call_later(
            delay, self.close, CloseCode.TOKEN_EXPIRED, "token expired"
        )

    def cancel_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
