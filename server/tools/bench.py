"""``switchboard bench``: load tests over real WebSocket connections.

- storm: open ``--connections`` at once (``--max-concurrent`` handshakes in flight) and close
  them; connections/s, handshake-to-``connected`` latency, failures by reason.
- throughput: every connection sends ``--messages`` room messages back to back.
- fanout: one sender per room sends ``--messages`` at ``--message-interval`` to all the others.
- sustained: every connection sends one message per ``--message-interval`` for ``--duration``.

Connections are spread over ``--rooms`` rooms (joined with ``?rooms=``) and each is a user of
its own. Every message carries its sender, sequence number and send time (monotonic clock,
shared by the processes of one machine), so each delivery is timed and counted: a delivery
expected (one per other member of the room, for each message the server did not refuse) that
never came is lost. Refusals (``error`` frames), unexpected closes and refused handshakes are
failures, by reason. When the server listens on this machine its RSS is sampled
(``bench_meter.py``). The options and the command are in ``bench_cli.py``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Self

import orjson

from .bench_meter import Meter, RssSampler
from .bench_model import Params, Results
from .bench_ws import TEXT, BenchSocket, HandshakeError, connect
from .client import describe_failure
from .options import Minter

TESTS = ("storm", "throughput", "fanout", "sustained")
CONNECT_TIMEOUT = 15.0
SYNC_TIMEOUT = 30.0

_MESSAGE = b'{"type":"message"'
_MARK = b'"b":['


async def _either(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


class Conn:
    """One bench connection: counts and times what it receives."""

    __slots__ = ("closing", "index", "pong", "res", "room", "sock", "welcome")

    def __init__(self, index: int, room: str | None, res: Results) -> None:
        self.index, self.room, self.res = index, room, res
        self.sock: BenchSocket | None = None
        self.closing = False
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[None] = loop.create_future()
        self.pong: asyncio.Future[None] | None = None

    def on_text(self, payload: bytes, now_ns: int) -> None:
        res = self.res
        if payload.startswith(_MESSAGE):
            # the hot path, a delivery: only the mark is read (the content is ours: "x"s)
            at = payload.rfind(_MARK)
            if at > 0:
                key, _, sent = payload[at + len(_MARK):payload.find(b"]", at)].partition(b",")
                res.deliver(int(key), int(sent), now_ns)
            return
        obj = orjson.loads(payload)
        type_ = obj.get("type")
        if type_ == "message":  # written differently (spaces, another key order)
            mark = (obj.get("data") or {}).get("b")
            if isinstance(mark, list) and len(mark) == 2:
                res.deliver(mark[0], mark[1], now_ns)
        elif type_ == "ack":
            res.acked += 1
        elif type_ == "pong":
            if self.pong is not None and not self.pong.done():
                self.pong.set_result(None)
        elif type_ == "connected":
            if not self.welcome.done():
                self.welcome.set_result(None)
        elif type_ == "error":
            reply_to = obj.get("reply_to") or ""
            code = str((obj.get("data") or {}).get("code"))
            if reply_to.startswith("m"):
                res.refused(int(reply_to[1:], 16), code)
            else:
                res.failures[f"error {code}"] += 1

    def on_closed(self, closed: asyncio.Future[int | None]) -> None:
        if not self.closing:
            self.res.failures[f"closed {closed.result()}" if closed.result() else "connection lost"] += 1

    @property
    def open(self) -> bool:
        return self.sock is not None and not self.sock.closed.done()

    async def sync(self) -> None:
        """Ping and wait for the pong: every frame queued for us before it has arrived."""
        assert self.sock is not None
        self.pong = asyncio.get_running_loop().create_future()
        self.sock.send(TEXT, b'{"type":"ping"}')
        await _either(self.pong, self.sock.closed)

    async def close(self) -> None:
        self.closing = True
        if self.sock is not None:
            await self.sock.close()


class Bench:
    def __init__(self, params: Params, mint: Minter, progress: Progress,
                 server_pid: int | None) -> None:
        self.p = params
        self.mint = mint
        self.progress = progress
        self.server_pid = server_pid
        self.run_id = secrets.token_hex(3)

    # --- connections ----------------------------------------------------------------------
    async def _connect(self, index: int, room: str | None, res: Results,
                       sem: asyncio.Semaphore) -> Conn | None:
        """Open one connection and wait for its ``connected`` frame; a failure is counted."""
        async with sem:
            token = self.mint(f"bench-{self.run_id}-{index}", username=f"bench{index}")
            conn = Conn(index, room, res)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    conn.sock = await connect(self.p.url, token, conn.on_text,
                                              query={"rooms": room} if room else None)
                    await _either(conn.welcome, conn.sock.closed)
            except HandshakeError as exc:
                res.failures[str(exc)] += 1
                return None
            except (OSError, TimeoutError) as exc:
                res.failures[describe_failure(exc)[0]] += 1
                if conn.sock is not None:
                    conn.sock.transport.abort()  # type: ignore[union-attr]
                return None
            if not conn.welcome.done():
                res.failures[f"closed {conn.sock.closed.result()} before connected"] += 1
                return None
            res.connect_ms.append((time.perf_counter() - started) * 1000)
            res.opened += 1
            conn.sock.closed.add_done_callback(conn.on_closed)
            return conn

    async def open_all(self, res: Results, *, rooms: bool) -> list[Conn]:
        sem = asyncio.Semaphore(self.p.max_concurrent)
        names = [f"bench-{self.run_id}-{res.name}-{k}" for k in range(self.p.rooms)]
        meter = Meter(self.server_pid)
        with self.progress.task(f"{res.name}: connecting", self.p.connections,
                                lambda: res.opened + sum(res.failures.values())):
            tried = await asyncio.gather(*(
                self._connect(i, names[i % self.p.rooms] if rooms else None, res, sem)
                for i in range(self.p.connections)))
        if not rooms:
            meter.stop(res)
        res.connect_seconds = meter.wall()
        conns = [c for c in tried if c is not None]
        if rooms and conns:  # frames queued before our pong (user_joined) have all arrived
            async with asyncio.timeout(SYNC_TIMEOUT):
                await asyncio.gather(*(c.sync() for c in conns))
        return conns

    @staticmethod
    async def close_all(conns: list[Conn]) -> None:
        await asyncio.gather(*(c.close() for c in conns))

    # --- messages -------------------------------------------------------------------------
    async def _send(self, conn: Conn, count: int, interval: float, members: int) -> None:
        res, sock = conn.res, conn.sock
        assert sock is not None
        content = "x" * self.p.payload_bytes
        base = conn.index << 32
        start = time.monotonic()
        for seq in range(count):
            delay = start + seq * interval - time.monotonic()
            await asyncio.sleep(max(delay, 0))  # a turn for the readers even when late
            if not conn.open:  # closed by the server: what is left is not sent
                return
            key = base | seq
            res.due[key] = members - 1
            res.expected += members - 1
            now = time.monotonic_ns()
            res.first_send = res.first_send or now
            frame = orjson.dumps({"type": "message", "id": f"m{key:x}", "room": conn.room,
                                  "data": {"content": content, "b": [key, now]}})
            sock.send(TEXT, frame)
            res.sent += 1
            res.last_send = time.monotonic_ns()
            await sock.drain()

    async def _drain(self, res: Results) -> None:
        """Wait for every due delivery, or until none has come for ``--drain-timeout``."""
        last, quiet_since = -1, time.monotonic()
        while res.delivered < res.expected:
            if res.delivered != last:
                last, quiet_since = res.delivered, time.monotonic()
            elif time.monotonic() - quiet_since > self.p.drain_timeout:
                return
            await asyncio.sleep(0.02)

    async def messages(self, name: str, pick: Callable[[list[Conn]], list[Conn]], count: int,
                       interval: float) -> Results:
        res = Results(name, self.p.connections)
        res.interval = interval
        conns = await self.open_all(res, rooms=True)
        members = Counter(c.room for c in conns)
        senders = pick(conns)
        total = sum(count * (members[c.room] - 1) for c in senders)
        meter = Meter(self.server_pid)
        with self.progress.task(f"{name}: deliveries", total, lambda: res.delivered):
            await asyncio.gather(*(self._send(c, count, interval, members[c.room]) for c in senders))
            await self._drain(res)
        meter.stop(res)
        await self.close_all(conns)
        return res

    # --- the tests ------------------------------------------------------------------------
    async def storm(self) -> Results:
        res = Results("storm", self.p.connections)
        conns = await self.open_all(res, rooms=False)
        await self.close_all(conns)
        return res

    async def throughput(self) -> Results:
        return await self.messages("throughput", lambda conns: conns, self.p.messages, 0.0)

    async def fanout(self) -> Results:
        def first_of_each_room(conns: list[Conn]) -> list[Conn]:
            return list({c.room: c for c in reversed(conns)}.values())

        return await self.messages("fanout", first_of_each_room, self.p.messages, self.p.interval)

    async def sustained(self) -> Results:
        count = max(1, int(self.p.duration / self.p.interval))
        return await self.messages("sustained", lambda conns: conns, count, self.p.interval)

    async def run(self, name: str) -> Results:
        sampler = RssSampler(self.server_pid)
        sampler.start()
        wall = time.perf_counter()
        try:
            res: Results = await getattr(self, name)()
        finally:
            rss = await sampler.stop()
        res.elapsed = time.perf_counter() - wall
        res.rss, res.server_pid = rss, self.server_pid
        return res


# --- progress --------------------------------------------------------------------------------
class Progress:
    """A live progress bar on stderr (nothing when stderr is not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                           TaskProgressColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True), transient=True)

    def __enter__(self) -> Self:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    class _Task:
        def __init__(self, bar: Any, label: str, total: int, done: Callable[[], int]) -> None:
            self.bar, self.done = bar, done
            self.id = bar.add_task(label, total=total) if bar is not None else None
            self.ticker: asyncio.Task[None] | None = None
            if bar is not None:
                self.ticker = asyncio.get_running_loop().create_task(self._tick())

        async def _tick(self) -> None:
            while True:
                self.bar.update(self.id, completed=self.done())
                await asyncio.sleep(0.1)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            if self.ticker is not None:
                self.ticker.cancel()
                self.bar.update(self.id, completed=self.done(), visible=False)

    def task(self, label: str, total: int, done: Callable[[], int]) -> Progress._Task:
        return Progress._Task(self.bar, label, total, done)
