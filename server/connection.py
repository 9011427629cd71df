"""One client connection: identity, rooms, a bounded outbound queue and its writer task.

Only the handler task in ``ws.py`` reads from the socket; everything else sends by calling
:meth:`Connection.send`, which never waits. When nothing is queued and the socket's transport
buffer is under its high-water mark, ``send`` gives the finished frame to the transport itself
(no task switch per recipient: the fan-out's cost), at the end of the event loop's turn
together with the connection's other frames of that turn, in one write (one system call for
the acks and deliveries of the several frames a client's read brings); otherwise it appends
to the queue (made when first needed, dropped once empty), which
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
import sys
import time
from collections import deque
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSMsgType, web

from .log import in_connection_task
from .protocol import CloseCode, new_id, text_frame

#: the rooms of a connection in none (one shared, immutable empty set)
NO_ROOMS: frozenset[str] = frozenset()

if TYPE_CHECKING:
    from .identity import User

_TEXT = WSMsgType.TEXT
#: most bytes written to a connection's socket that the kernel holds unsent (bytes in flight,
#: bounded by the peer's window, are not counted): the rest waits in this process, counted
KERNEL_UNSENT = 65536
_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS
#: most frames gathered for one write in one turn of the event loop
MAX_CORKED = 64
_log = structlog.get_logger("server.ws")
#: a WebSocket ping without payload, as the server sends it (FIN, opcode 9, unmasked)
_PING_FRAME = b"\x89\x00"
#: the queued marker the writer sends as a ping
_PING_MARKER = b""


class _Cork:
    """The connections that had frames written to them in this turn of the event loop: each
    gets its frames in one write at the end of the turn (one ``send`` system call for the acks
    and deliveries of several messages), flushed by one callback for all of them."""

    __slots__ = ("loop", "dirty")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self.dirty:
            self.loop.call_soon(self.flush)
        self.dirty.append(conn)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()


_corks: dict[int, _Cork] = {}


def _cork_for(loop: asyncio.AbstractEventLoop) -> _Cork:
    """The loop's cork (one per event loop: tests run several loops in one process)."""
    cork = _corks.get(id(loop))
    if cork is None or cork.loop is not loop:
        for key in [k for k, c in _corks.items() if c.loop.is_closed()]:
            del _corks[key]
        cork = _corks[id(loop)] = _Cork(loop)
    return cork


def limit_kernel_unsent(sock: Any) -> bool:
    """Hold ``sock``'s unsent bytes in the kernel to ``KERNEL_UNSENT``; on a listening socket,
    for every connection it accepts (Linux copies the option to them). Whether it was set."""
    if sock is None or _NOTSENT_LOWAT is None or sock.family not in (socket.AF_INET,
                                                                     socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, KERNEL_UNSENT)
    except OSError:  # closed already, or a kernel without the option
        return False
    return True


#: whether an accepted socket has its listener's TCP_NOTSENT_LOWAT
INHERITED_FROM_LISTENER = sys.platform.startswith("linux")


def _limit_kernel_unsent(transport: asyncio.BaseTransport) -> None:
    # a listener that set it already (http.handshake.listen) says so on its protocols: on uvloop
    # each get_extra_info("socket").setsockopt builds a socket object, 3% of a connect storm
    if getattr(transport.get_protocol(), "kernel_unsent_limited", False):  # type: ignore[attr-defined]
        return
    limit_kernel_unsent(transport.get_extra_info("socket"))


class Connection:
    __slots__ = (
        "id", "user", "ws", "remote", "_log", "rooms", "connected_at", "expires_at",
        "last_activity", "write_started", "closing", "close_code", "_queue", "_queued_bytes",
        "_max_bytes", "_max_messages", "_writer", "expiry_due", "invalid_frames",
        "state", "request", "_socket", "_transport", "_high_water", "_corked", "_cork",
        "_bursting",
    )

    def __init__(self, ws: web.WebSocketResponse, user: "User", *, remote: str,
                 max_bytes: int, max_messages: int, request: web.Request | None = None,
                 log: Any = None) -> None:
        self.id = new_id()
        self.user = user
        self.ws = ws
        self.remote = remote
        self._log = log  # None: bound when used (the ``log`` property)
        self.request = request
        # a set of its own once it joins one (Hub.subscribe): an empty set is ~0.2 KiB
        self.rooms: AbstractSet[str] = NO_ROOMS
        self.connected_at = time.time()
        self.expires_at: float | None = None
        self.last_activity = time.monotonic()
        self.write_started = 0.0  # monotonic time a write began; 0 when none is pending
        self.closing = False
        self.close_code: int | None = None
        self.invalid_frames = 0
        #: free per-connection state for plugins, keyed by plugin name
        self.state: dict[str, Any] = {}
        # made when the first frame is queued, dropped once written out: a deque is ~0.75 KiB,
        # and most connections never queue (``send`` writes straight to the transport)
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._writer: asyncio.Task[None] | None = None
        #: when the hub's sweeper closes this connection as expired (4001); None: never
        self.expiry_due: float | None = None
        # set by start(): the socket's transport; the same when frames may be written straight
        # to it
        self._socket: asyncio.BaseTransport | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._high_water = 0
        #: frames written in this turn of the event loop, not yet given to the transport
        self._corked: list[bytes] | None = None
        self._cork: _Cork | None = None
        #: whether the last turn that wrote to it brought several frames (``send``)
        self._bursting = False

    @property
    def log(self) -> Any:
        """The connection's structlog logger (``conn_id``, ``user_id``), bound at each use
        rather than kept: a connection logs a few lines in its life, and a kept bound logger
        costs each one ~0.5 KiB. One that was set (``HttpConnection``'s) is kept."""
        if self._log is not None:
            return self._log
        return _log.bind(conn_id=self.id, user_id=self.user.id)

    @log.setter
    def log(self, value: Any) -> None:
        self._log = value

    @property
    def task_log(self) -> Any:
        """``log`` for a line written in the connection's own task, whose log context carries
        ``conn_id`` and ``user_id`` already (``log.bind_connection``): nothing is bound there
        (two binds a connection were 2% of a connect storm). Elsewhere, ``log``."""
        if self._log is None and in_connection_task(self):
            return _log
        return self.log

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
            self._cork = _cork_for(asyncio.get_running_loop())

    def ping(self) -> None:
        """The hub's heartbeat: written straight to the socket when nothing waits before it
        (as ``send`` writes a frame), so that an idle connection gets no writer task for it;
        else queued behind what waits (and dropped when the queue is full)."""
        transport = self._transport
        if (transport is not None and not self.closing and not self._queue
                and not self.write_started and not self.ws.closed and not transport.is_closing()
                and transport.get_write_buffer_size() < self._high_water):
            transport.write(_PING_FRAME)
        else:
            self.send(_PING_MARKER, droppable=True)

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

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
        corked = self._corked
        if corked is not None and payload:  # more in this turn: after the others, in one write
            if len(corked) < MAX_CORKED:
                corked.append(framed if framed is not None else text_frame(payload))
                return True
            self.flush()
        transport = self._transport
        if (transport is not None and payload and not self._queue and not self.write_started
                and not self.ws.closed and transport.get_write_buffer_size() < self._high_water):
            data = framed if framed is not None else text_frame(payload)
            if self._bursting:  # frames come several a turn: all of this turn's in one write
                self._corked = [data]
            else:  # one now and then: it goes at once, any more of this turn's at its end
                transport.write(data)
                self._corked = []
            self._cork.add(self)  # type: ignore[union-attr]
            return True
        size = len(payload)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if self._queued_bytes + size > self._max_bytes or len(queue) >= self._max_messages:
            if droppable:
                return False
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue overflowed")
            return False
        queue.append(payload)
        self._queued_bytes += size
        writer = self._writer
        if writer is None or writer.done():  # an idle connection has no writer task
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        return True

    def flush(self) -> None:
        """Give the frames written in this turn to the transport, in one write."""
        corked, self._corked = self._corked, None
        transport = self._transport
        if corked is None or transport is None or transport.is_closing():
            return
        # a turn that brought several frames: the next ones wait for their turn's end too,
        # until a turn brings just one again
        self._bursting = len(corked) + (0 if self._bursting else 1) > 1
        if len(corked) == 1:
            transport.write(corked[0])
        elif corked:
            transport.writelines(corked)

    async def _write_loop(self) -> None:
        """Write the queue out, then end: ``send`` starts it again for the next queued frame."""
        ws, queue = self.ws, self._queue
        assert queue is not None  # send() made it before starting this task
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
            if self._queue is queue:  # written out: the next frame goes straight out again
                self._queue = None
            self._writer = None
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
        if self._queue is not None:
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
    # No timer per connection (a TimerHandle, its arguments and a copy of the context: ~0.5
    # KiB each): the hub's sweeper closes the connections whose ``expiry_due`` has passed.
    def schedule_expiry(self, expires_at: float | None) -> None:
        """Close with 4001 once ``expires_at`` (Unix seconds) has passed; None: never."""
        self.expires_at = self.expiry_due = expires_at

    def cancel_expiry(self) -> None:
        self.expiry_due = None
