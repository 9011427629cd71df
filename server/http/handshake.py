"""``server.handshake_timeout``: a connection whose request headers are not complete in time
is closed (slowloris: handshakes that trickle in a byte at a time and never finish, each
holding a socket). aiohttp has no such timeout of its own.

:func:`listen` opens the listening socket for an ``AppRunner`` (instead of a ``TCPSite``) and
puts a :class:`HeaderDeadline` between each accepted socket and aiohttp's protocol. The clock
starts when the connection is accepted, and on a keep-alive connection again at the first
byte of each later request; it stops when the request's headers are complete, which the
:func:`headers_read` middleware (first in ``create_app``'s list) reports. While a request is
being handled (a body upload, a long response, a WebSocket for all its life) nothing is
timed, and an idle keep-alive connection is left to aiohttp's keep-alive timeout. A
connection that runs out of time is closed without an answer, before it has reached the
application: it never held a place in the upgrade guards' counts.

Servers made another way (aiohttp's ``TestServer``) have no header deadline; the middleware is
then a no-op.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar, cast

import structlog
from aiohttp import web

from ..connection import INHERITED_FROM_LISTENER, limit_kernel_unsent
from ..keys import WS_ROUTE

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_P = TypeVar("_P", bound=asyncio.Protocol)


class HeaderDeadline(asyncio.Protocol):
    """One connection: aiohttp's protocol (``inner``) behind a clock on its request headers."""

    __slots__ = ("_inner", "_timeout", "_loop", "_transport", "_timer", "_busy",
                 "kernel_unsent_limited")

    def __init__(self, inner: asyncio.Protocol, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._timeout = timeout
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # between a request's complete headers and its handler's end
        #: the listener limited this socket's unsent bytes (``listen``): Connection need not
        self.kernel_unsent_limited = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, though on uvloop not a subclass of asyncio's: no isinstance check
        self._transport = cast(asyncio.Transport, transport)
        self._start()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._timer is None and data:
            self._start()  # the first byte of the next request on a keep-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def insert(self, make: Callable[[asyncio.Protocol], _P]) -> _P:
        """Put ``make(aiohttp's protocol)`` between this one and aiohttp's, for the bytes still
        to come (``MaskGuard``): what ``transport.set_protocol`` does, without uvloop's restart
        of reading that comes with it (two epoll changes per connection)."""
        inserted = make(self._inner)
        self._inner = inserted
        return inserted

    def request_started(self) -> None:
        """The request's headers are complete: stop the clock."""
        self._busy = True
        self._stop()

    def request_ended(self) -> None:
        """The request is answered: the next byte starts the next request's clock."""
        self._busy = False

    def _start(self) -> None:
        self._timer = self._loop.call_later(self._timeout, self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        log.info("handshake_timeout", remote=peer[0] if isinstance(peer, tuple) else None,
                 timeout=self._timeout)
        transport.close()


def _deadline(request: web.BaseRequest) -> HeaderDeadline | None:
    transport = request.transport
    deadline = transport.get_protocol() if transport is not None else None
    return deadline if isinstance(deadline, HeaderDeadline) else None


@web.middleware
def headers_read(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Tells the connection's :class:`HeaderDeadline` (if it has one) that a request's headers
    are complete, and when its handler is done. Not a coroutine: the WebSocket endpoint gets
    its handler's own awaitable, so nothing of this stays suspended for a connection's life,
    and says itself when it is done (:func:`request_done`)."""
    deadline = _deadline(request)
    if deadline is None:
        return handler(request)
    deadline.request_started()
    if request.match_info.route.name == WS_ROUTE:
        return handler(request)
    return _timed(deadline, handler(request))


async def _timed(deadline: HeaderDeadline,
                 answer: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    try:
        return await answer
    finally:
        deadline.request_ended()


def request_done(request: web.BaseRequest) -> None:
    """The WebSocket endpoint's handler is done: a keep-alive connection (an upgrade that was
    refused) times its next request's headers again."""
    deadline = _deadline(request)
    if deadline is not None:
        deadline.request_ended()


async def listen(runner: web.AppRunner, host: str, port: int, *, timeout: float,
                 reuse_port: bool = False, backlog: int = 128) -> asyncio.Server:
    """Listen for ``runner`` (set up, its app made by ``create_app``) on ``host:port``, each
    connection behind a :class:`HeaderDeadline` of ``timeout`` seconds. Close the returned
    server before ``runner.cleanup()``, as a site would be."""
    server = runner.server
    if server is None:
        raise RuntimeError("call runner.setup() first")
    if headers_read not in runner.app.middlewares:
        # without it no request would ever stop its clock: every connection would be cut
        raise RuntimeError("the app has no headers_read middleware")

    limited = False
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.Protocol:
        deadline = HeaderDeadline(server(), timeout, loop)
        deadline.kernel_unsent_limited = limited
        return deadline

    listener = await loop.create_server(protocol, host, port, backlog=backlog,
                                        reuse_address=True, reuse_port=reuse_port,
                                        start_serving=False)
    # set before listen(), once for every connection if the kernel passes it on (Linux)
    limited = INHERITED_FROM_LISTENER and all([limit_kernel_unsent(s) for s in listener.sockets])
    await listener.start_serving()
    return listener
