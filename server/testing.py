"""Testing a Switchboard plugin against a real server: a pytest plugin.

It serves the real app (:func:`server.app.create_app`) with the plugins and config a test
chooses, on a free port (pytest-aiohttp's ``aiohttp_client``), and connects real WebSocket
clients with signed tokens (:func:`server.auth.mint_token`). Every wait is bounded. Enable it in
the top-level ``conftest.py`` of your tests (or with ``-p server.testing`` in pytest's
``addopts``) and name the plugins the server runs::

    import pytest

    pytest_plugins = ["server.testing"]

    @pytest.fixture
    def switchboard_plugins() -> list[str]:
        return ["chat", "poll"]          # plugins.enabled, by entry-point name

    # a test module
    from server.testing import SwitchboardServer

    async def test_vote(switchboard_server: SwitchboardServer) -> None:
        alice = await switchboard_server.connect("alice", roles=["moderator"])
        assert (await alice.request("join", room="lobby"))["type"] == "joined"
        ack = await alice.request("poll.create", room="lobby", data={...})
        results = await alice.recv_type("poll.results")

It needs pytest-aiohttp and pytest-asyncio (Switchboard's ``test`` extra); with
``asyncio_mode = auto`` the async tests need no marker.

Fixtures (function scope; each name starts with ``switchboard_``, so they meet nobody else's):

``switchboard_plugins`` -> ``list[str]``
    ``plugins.enabled``: ``["chat"]`` unless a fixture of that name in a conftest, module or
    class overrides it, or ``@pytest.mark.parametrize("switchboard_plugins", [[...]])``.
``switchboard_overrides`` -> ``dict[str, Any]``
    config overrides shaped like ``websocket.yaml``, e.g. ``{"plugins": {"poll":
    {"max_options": 3}}}``; ``{}`` unless overridden or parametrized the same way.
``switchboard_server`` -> :class:`SwitchboardServer`
    the server with that config (:func:`build_config`).
``switchboard_start`` -> :class:`StartServer`
    ``await switchboard_start(plugins=..., overrides=...)``: one more server; ``plugins``
    defaults to ``switchboard_plugins``, ``overrides`` are merged over ``switchboard_overrides``.

A :class:`SwitchboardServer` has ``http`` (the aiohttp ``TestClient``: ``await
server.http.get("/api/protocol")``), ``config``, ``app``, ``ws_url``, ``token(user_id,
roles=...)``, ``auth_headers(user_id, roles=...)`` and ``await connect(user_id, roles=...)``,
which returns a :class:`SwitchboardClient` once the server's ``connected`` frame came. A
client's ``request(type_, **fields)`` sends a frame with a fresh ``id`` and returns the frame
whose ``reply_to`` is that id, leaving the frames that came before it to be read;
``recv_type(type_)`` returns the next frame of that type, ``recv()`` the next frame,
``until_pong()`` every frame sent to it so far, ``closed()`` the close code; ``send``,
``send_raw``, ``close``. Each wait lasts at most ``timeout`` (:data:`DEFAULT_TIMEOUT` unless
given). When the test ends its clients are closed, then its servers stop (the plugins'
``on_shutdown`` run). Helpers: :func:`build_config` (for ``pytest.raises(ConfigError)`` around
``create_app``), :func:`merge`, :data:`TEST_SECRET`, :data:`DEFAULT_TIMEOUT`.

Failures raise ``AssertionError`` with their own message (what was awaited, for how long, the
frames seen meanwhile), so the module is not rewritten by pytest (PYTEST_DONT_REWRITE): it may
be imported before pytest registers it as a plugin. Nothing in ``server`` imports this module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from typing import Any, AsyncIterator, Awaitable, ClassVar, Iterable, Mapping, Protocol

import pytest
import pytest_asyncio
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from .app import create_app
from .auth import mint_token
from .config import Config, load_config

__all__ = ["DEFAULT_TIMEOUT", "StartServer", "SwitchboardClient", "SwitchboardServer",
           "TEST_SECRET", "build_config", "merge"]

#: ``auth.secret`` of the test servers (HS256; long enough for RFC 7518)
TEST_SECRET = "test-secret-0123456789abcdef0123456789"
#: seconds any one wait of a client lasts at most, unless given
DEFAULT_TIMEOUT = 5.0

_frame_ids = itertools.count(1)


def _defaults() -> dict[str, Any]:
    """The test servers' config under any override: the secret, the chat plugin, and no limit
    on connections per IP (every client comes from 127.0.0.1)."""
    return {"auth": {"secret": TEST_SECRET}, "plugins": {"enabled": ["chat"]},
            "security": {"connect_rate_per_ip": 0}}


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` over it: mappings merge key by key, anything else (lists too)
    replaces. Neither argument changes."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            value = merge(old, value)
        out[key] = value
    return out


def build_config(overrides: Mapping[str, Any] | None = None, *,
                 plugins: Iterable[str] | None = None) -> Config:
    """A validated server config: the test defaults (:data:`TEST_SECRET`, ``plugins.enabled:
    [chat]``, ``security.connect_rate_per_ip: 0``), then ``plugins`` as ``plugins.enabled``,
    then ``overrides``. No file and no environment variable is read. Raises ``ConfigError`` for
    the core's sections; the plugins' sections are checked by ``create_app``."""
    layers = _defaults()
    if plugins is not None:
        layers = merge(layers, {"plugins": {"enabled": list(plugins)}})
    return load_config(None, env={}, overrides=merge(layers, overrides or {})).config


class _Wait:
    """One bounded wait: its deadline, and the frames read meanwhile (for the failure)."""

    def __init__(self, timeout: float, waiting_for: str) -> None:
        self.timeout = timeout
        self.waiting_for = waiting_for
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.seen: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def failed(self) -> AssertionError:
        types = [str(frame.get("type")) for frame in self.seen]
        shown = ", ".join(types[:10]) + (f" and {len(types) - 10} more" if len(types) > 10 else "")
        return AssertionError(f"{self.waiting_for} within {self.timeout}s "
                              f"(frames meanwhile: {shown or 'none'})")


class SwitchboardClient:
    """A WebSocket client of a test server: JSON frames in and out, bounded waits.

    ``ws`` is aiohttp's ``ClientWebSocketResponse``; ``connected`` the server's ``connected``
    frame (when :meth:`SwitchboardServer.connect` waited for it). Frames are read in order;
    :meth:`request` reads ahead to its reply and leaves the frames before it unread (unless
    ``keep_frames_before_reply`` is false), so a handler's own sends that precede its ``ack``
    are still there for :meth:`recv_type`."""

    #: whether :meth:`request` keeps the frames that came before its reply for the next reads
    keep_frames_before_reply: ClassVar[bool] = True

    def __init__(self, ws: ClientWebSocketResponse, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ws = ws
        #: the longest one wait of this client lasts, in seconds, unless a call gives its own
        self.timeout = timeout
        self.connected: dict[str, Any] | None = None
        self._unread: deque[dict[str, Any]] = deque()

    async def send(self, type_: str, **fields: Any) -> None:
        """Send ``{"type": type_, **fields}`` (``id``, ``room``, ``to``, ``data``...)."""
        await self.ws.send_str(json.dumps({"type": type_, **fields}))

    async def send_raw(self, text: str) -> None:
        """Send ``text`` as it is (for frames that are not valid JSON or not an object)."""
        await self.ws.send_str(text)

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame. Raises ``TimeoutError`` when none comes within ``timeout`` (default
        :attr:`timeout`), ``AssertionError`` for anything but a text message (a close too)."""
        if self._unread:
            return self._unread.popleft()
        msg = await self.ws.receive(timeout=self.timeout if timeout is None else timeout)
        if msg.type is not WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} "
                                 f"{msg.extra!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def _read(self, wait: _Wait) -> dict[str, Any]:
        left = wait.left()
        if left <= 0 and not self._unread:
            raise wait.failed()
        try:
            frame = await self.recv(left)
        except TimeoutError:
            raise wait.failed() from None
        wait.seen.append(frame)
        return frame

    async def recv_type(self, type_: str, timeout: float | None = None) -> dict[str, Any]:
        """The next frame of type ``type_``; the frames of other types before it are dropped.
        ``AssertionError`` when none comes within ``timeout`` (default :attr:`timeout`)."""
        wait = _Wait(self.timeout if timeout is None else timeout, f"no {type_!r} frame")
        while (frame := await self._read(wait))["type"] != type_:
            pass
        return frame

    async def request(self, type_: str, *, timeout: float | None = None,
                      **fields: Any) -> dict[str, Any]:
        """Send a ``type_`` frame with ``fields`` and a fresh ``id``; return the frame whose
        ``reply_to`` is that id (``ack``, ``error``, ``pong``, ``joined``...), within
        ``timeout`` (default :attr:`timeout`), or raise ``AssertionError``."""
        frame_id = f"req-{next(_frame_ids)}"
        await self.send(type_, id=frame_id, **fields)
        wait = _Wait(self.timeout if timeout is None else timeout,
                     f"no reply to {type_!r} (id {frame_id!r})")
        before: list[dict[str, Any]] = []
        while (frame := await self._read(wait)).get("reply_to") != frame_id:
            before.append(frame)
        if self.keep_frames_before_reply:
            self._unread.extendleft(reversed(before))
        return frame

    async def until_pong(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Send a ``ping`` and return the frames read before its ``pong``: all the server had
        sent this connection by then (it answers a connection's frames in order). ``assert
        await client.until_pong() == []`` checks that nothing else came, without sleeping."""
        frame_id = f"ping-{next(_frame_ids)}"
        await self.send("ping", id=frame_id)
        wait = _Wait(self.timeout if timeout is None else timeout, f"no pong (id {frame_id!r})")
        frames: list[dict[str, Any]] = []
        while (frame := await self._read(wait)).get("reply_to") != frame_id:
            frames.append(frame)
        return frames

    async def closed(self, timeout: float | None = None) -> int | None:
        """Read until the server closes the connection (frames before are dropped); return the
        close code. ``AssertionError`` when it stays open past ``timeout``."""
        self._unread.clear()
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return self.ws.close_code
        raise AssertionError(f"the server did not close the connection within {limit}s")

    async def close(self) -> None:
        """Close the connection (code 1000); nothing if it is closed already."""
        await self.ws.close()


class SwitchboardServer:
    """A test server: ``http`` is pytest-aiohttp's ``TestClient`` for HTTP calls
    (``await server.http.get("/api/protocol")``), ``config`` the server's config, ``app`` the
    application."""

    def __init__(self, http: TestClient[web.Request, web.Application], config: Config) -> None:
        self.http = http
        self.config = config
        #: every client :meth:`connect` made, closed when the test ends
        self.clients: list[SwitchboardClient] = []

    @property
    def app(self) -> web.Application:
        return self.http.app

    @property
    def ws_url(self) -> str:
        """The WebSocket URL (``ws://127.0.0.1:<port>/ws``), for clients other than ours."""
        return str(self.http.make_url(self.config.server.ws_path).with_scheme("ws"))

    def token(self, user_id: str, *, roles: Iterable[str] = (), username: str | None = None,
              email: str | None = None, ttl: int = 3600) -> str:
        """A token for ``user_id`` with ``roles``, signed with the server's secret. The
        username defaults to the user id."""
        return mint_token(self.config.auth, sub=user_id, username=username or user_id,
                          email=email, roles=list(roles) or None, ttl=ttl)

    def auth_headers(self, user_id: str, *, roles: Iterable[str] = ()) -> dict[str, str]:
        """``Authorization: Bearer <token>`` for the HTTP API."""
        return {"Authorization": f"Bearer {self.token(user_id, roles=roles)}"}

    async def connect(self, user_id: str, *, roles: Iterable[str] = (),
                      username: str | None = None, token: str | None = None,
                      params: Mapping[str, str] | None = None, expect_connected: bool = True,
                      timeout: float = DEFAULT_TIMEOUT) -> SwitchboardClient:
        """Connect as ``user_id`` with ``roles`` (or with ``token``; ``params`` are more query
        parameters) and, with ``expect_connected``, wait for the ``connected`` frame (kept as
        ``client.connected``). ``timeout`` becomes the client's
        :attr:`~SwitchboardClient.timeout`."""
        query = {"token": token or self.token(user_id, roles=roles, username=username),
                 **(params or {})}
        client = SwitchboardClient(await self.http.ws_connect(self.config.server.ws_path,
                                                              params=query), timeout=timeout)
        self.clients.append(client)
        if expect_connected:
            client.connected = await client.recv_type("connected")
        return client

    async def close_clients(self) -> None:
        """Close every client :meth:`connect` made."""
        for client in self.clients:
            await client.close()


class StartServer(Protocol):
    """The ``switchboard_start`` fixture."""

    def __call__(self, *, plugins: Iterable[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Awaitable[SwitchboardServer]: ...


@pytest.fixture
def switchboard_plugins() -> list[str]:
    """``plugins.enabled`` of the test server; override this fixture, or parametrize it."""
    return ["chat"]


@pytest.fixture
def switchboard_overrides() -> dict[str, Any]:
    """Config overrides of the test server (``websocket.yaml``'s shape); override this
    fixture, or parametrize it."""
    return {}


@pytest_asyncio.fixture
async def switchboard_start(aiohttp_client: AiohttpClient, switchboard_plugins: list[str],
                            switchboard_overrides: dict[str, Any]) -> AsyncIterator[StartServer]:
    """Start a server: ``await switchboard_start(plugins=[...], overrides={...})``."""
    servers: list[SwitchboardServer] = []

    async def start(*, plugins: Iterable[str] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> SwitchboardServer:
        config = build_config(merge(switchboard_overrides, overrides or {}),
                              plugins=switchboard_plugins if plugins is None else plugins)
        server = SwitchboardServer(await aiohttp_client(create_app(config)), config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close_clients()


@pytest_asyncio.fixture
async def switchboard_server(switchboard_start: StartServer) -> SwitchboardServer:
    """The test server: ``switchboard_plugins`` enabled, ``switchboard_overrides`` applied."""
    return await switchboard_start()
