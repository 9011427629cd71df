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
failures, by reason. When the server listens on this machine its RSS is sampled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import orjson
from yarl import URL

from .bench_report import render, summary
from .bench_ws import TEXT, BenchSocket, HandshakeError, connect
from .client import describe_failure

TESTS = ("storm", "throughput", "fanout", "sustained")
CONNECT_TIMEOUT = 15.0
SYNC_TIMEOUT = 30.0
Minter = Callable[..., str]


@dataclass(frozen=True, slots=True)
class Params:
    url: str
    connections: int
    messages: int
    duration: float
    max_concurrent: int
    interval: float  # seconds
    rooms: int
    payload_bytes: int
    drain_timeout: float
    max_errors: int

    @classmethod
    def from_args(cls, args: argparse.Namespace, url: str) -> Params:
        checks = [("--connections", args.connections, 1), ("--messages", args.messages, 1),
                  ("--max-concurrent", args.max_concurrent, 1), ("--rooms", args.rooms, 1),
                  ("--payload-bytes", args.payload_bytes, 0), ("--max-errors", args.max_errors, 0)]
        for flag, value, low in checks:
            if value < low:
                raise ValueError(f"{flag} must be at least {low}, got {value}")
        for flag, value in (("--duration", args.duration), ("--drain-timeout", args.drain_timeout)):
            if not value > 0:
                raise ValueError(f"{flag} must be greater than 0, got {value}")
        if not args.message_interval >= 0:
            raise ValueError(f"--message-interval must be 0 or more, got {args.message_interval}")
        if args.message_interval == 0 and args.test_type in ("sustained", "all"):
            raise ValueError("--message-interval must be greater than 0 for the sustained test")
        if args.rooms > args.connections:
            raise ValueError(f"--rooms ({args.rooms}) cannot exceed --connections ({args.connections})")
        return cls(url, args.connections, args.messages, args.duration, args.max_concurrent,
                   args.message_interval / 1000, args.rooms, args.payload_bytes,
                   args.drain_timeout, args.max_errors)


class Results:
    """What one test measured."""

    def __init__(self, name: str, attempted: int) -> None:
        self.name = name
        self.attempted = attempted
        self.opened = 0
        self.connect_ms = array("d")
        self.connect_seconds = 0.0
        self.failures: Counter[str] = Counter()
        self.sent = 0
        self.acked = 0
        self.expected = 0
        self.delivered = 0
        self.latency_ms = array("d")
        #: deliveries still due per message key (negative: duplicates)
        self.due: dict[int, int] = {}
        self.first_send = 0
        self.last_send = 0
        self.last_delivery = 0
        self.elapsed = 0.0
        #: wall seconds of the measured phase (the handshakes of a storm, the sending and
        #: draining of the others), and the CPU seconds the generator and the server used in it
        self.phase = 0.0
        self.cpu = 0.0
        self.server_cpu: float | None = None
        self.rss: dict[str, float] | None = None
        self.server_pid: int | None = None

    def deliver(self, key: int, sent_ns: int, now_ns: int) -> None:
        self.delivered += 1
        self.last_delivery = now_ns
        self.latency_ms.append((now_ns - sent_ns) / 1e6)
        due = self.due.get(key)
        if due is not None:
            self.due[key] = due - 1

    def refused(self, key: int, code: str) -> None:
        """The server answered a message with an error: its deliveries are not due."""
        self.failures[f"error {code}"] += 1
        due = self.due.pop(key, 0)
        self.expected -= max(due, 0)

    @property
    def lost(self) -> int:
        return sum(d for d in self.due.values() if d > 0)

    @property
    def duplicates(self) -> int:
        return -sum(d for d in self.due.values() if d < 0)


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


# --- the server's memory ------------------------------------------------------------------------
def listener_pid(url: str) -> int | None:
    """The process listening on ``url``'s port when the host is this machine's loopback."""
    parsed = URL(url)
    if parsed.host not in ("127.0.0.1", "localhost", "::1") or parsed.port is None:
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == parsed.port:  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, the generator's CPU time and the server's over one phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.started, self.cpu = time.perf_counter(), time.process_time()
        self.server_cpu = cpu_seconds(server_pid) if server_pid else None

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def stop(self, res: Results) -> None:
        res.phase, res.cpu = self.wall(), time.process_time() - self.cpu
        end = cpu_seconds(self.server_pid) if self.server_pid else None
        if end is not None and self.server_cpu is not None:
            res.server_cpu = end - self.server_cpu


class RssSampler:
    """The server's RSS at the start, at its peak (sampled every 0.2 s) and at the end."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.pid is not None:
            self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        assert self.pid is not None
        while (value := rss_mib(self.pid)) is not None:
            self.samples.append(value)
            await asyncio.sleep(0.2)

    async def stop(self) -> dict[str, float] | None:
        if self._task is None:
            return None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        end = rss_mib(self.pid) if self.pid is not None else None
        if end is not None:
            self.samples.append(end)
        if not self.samples:
            return None
        return {"start": round(self.samples[0], 1), "peak": round(max(self.samples), 1),
                "end": round(self.samples[-1], 1)}


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


# --- the command -----------------------------------------------------------------------------
def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _start_baseline() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.tools.bench_baseline", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    if not line:
        raise RuntimeError("the baseline server did not start")
    return proc, orjson.loads(line)["url"]


async def _main(args: argparse.Namespace, params: Params, mint: Minter) -> int:
    baseline = None
    if args.baseline:
        baseline, url = await _start_baseline()
        params = replace(params, url=url)
    try:
        pid = args.server_pid or (baseline.pid if baseline else listener_pid(params.url))
        names = TESTS if args.test_type == "all" else (args.test_type,)
        show = not args.no_progress and sys.stderr.isatty()
        bench = Bench(params, mint, Progress(show), pid)
        results = []
        with bench.progress:
            for name in names:
                results.append(await bench.run(name))
    finally:
        if baseline is not None and baseline.returncode is None:
            baseline.send_signal(signal.SIGTERM)
            await baseline.wait()
    report = summary(params, results, target="baseline" if args.baseline else "switchboard")
    render(report, json_path=args.json)
    return int(report["exit_status"])


def run(args: argparse.Namespace, url: str, mint: Minter) -> int:
    try:
        params = Params.from_args(args, url)
    except ValueError as exc:
        print(f"switchboard bench: {exc}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    try:
        return asyncio.run(_main(args, params, mint))
    except KeyboardInterrupt:
        return 130

