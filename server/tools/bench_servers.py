"""The servers ``switchboard bench --suite`` measures, each a process of its own started for one
run and stopped after it: Switchboard (``switchboard serve`` on a config the suite writes), the
raw aiohttp reference (``bench_baseline.py``) and, for the Redis scenario, a ``redis-server``.
Each can be pinned to a set of cores (``os.sched_setaffinity``: what ``taskset`` does)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import yaml

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

#: what the suite's Switchboard runs with: the shipped configuration (JWT, the four plugins,
#: every pipeline stage, the memory backend, logging at info in JSON) with the limits that would
#: refuse a load test raised, so every stage is still checked on every frame but refuses nothing
SHIPPED_UNDER_LOAD: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "max_connections": 50_000},
    "logging": {"level": "info", "format": "json"},
    "rate_limit": {"messages_per_minute": 10_000_000, "burst": 1_000_000,
                   "user_messages_per_minute": 10_000_000, "user_burst": 1_000_000},
    "security": {"max_connections_per_ip": 0, "connect_rate_per_ip": 0, "max_connections_per_user": 0},
    "rooms": {"max_members": 100_000},
    "messages": {"filter": {"enabled": True, "words": ["spam", "scam"]}},
}

#: variables that would override the suite's config in the server's environment
_SCRUBBED = ("JWT_SECRET", "REDIS_URL", "SWITCHBOARD_CONFIG")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_") and k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """One server process: its port, pid and the file its output goes to."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def pids(self) -> Iterator[int]:
        """The process and its children (the workers of ``--workers``)."""
        yield self.pid
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return
        yield from (int(c) for c in children)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _spawn(argv: list[str], log: Path, pin: set[int] | None) -> asyncio.subprocess.Process:
    def pinned() -> None:  # in the child, before exec
        if pin:
            os.sched_setaffinity(0, pin)

    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            env=_env(), preexec_fn=pinned)


async def _wait_for(proc: asyncio.subprocess.Process, log: Path, marker: bytes, count: int,
                    label: str) -> None:
    """Until the output holds ``marker`` ``count`` times (polled: the server writes to a file,
    so reading it costs the load generator nothing while it measures)."""
    deadline = time.monotonic() + START_TIMEOUT
    while log.read_bytes().count(marker) < count:
        if proc.returncode is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{label} did not start:\n{tail}")
        await asyncio.sleep(0.05)


class Lab:
    """Where the suite's files go, and its key: every Switchboard it starts shares the secret
    the suite mints its tokens with."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.secret = secrets.token_urlsafe(48)
        self._n = 0

    def _file(self, stem: str, suffix: str) -> Path:
        self._n += 1
        return self.dir / f"{self._n:03d}-{stem}{suffix}"

    def config(self, extra: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        data = merged(merged(SHIPPED_UNDER_LOAD, {"auth": {"secret": self.secret}}), extra)
        path = self._file("switchboard", ".yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path, data

    @asynccontextmanager
    async def switchboard(self, extra: dict[str, Any], *, pin: set[int] | None,
                          workers: int = 1) -> AsyncIterator[Server]:
        cfg, _ = self.config(extra)
        port, log = free_port(), self._file("switchboard", ".log")
        argv = [sys.executable, "-m", "server", "serve", "-c", str(cfg), "--port", str(port)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = await _spawn(argv, log, pin)
        server = Server(proc, port, log)
        try:
            await _wait_for(proc, log, b'"server_listening"', workers, "switchboard serve")
            yield server
        finally:
            await server.stop()

    @asynccontextmanager
    async def baseline(self, *, pin: set[int] | None, event_loop: str = "asyncio") -> AsyncIterator[Server]:
        port, log = free_port(), self._file("baseline", ".log")
        argv = [sys.executable, "-m", "server.tools.bench_baseline", "--port", str(port),
                "--event-loop", event_loop]
        proc = await _spawn(argv, log, pin)
        server = Server(proc, port, log)
        try:
            await _wait_for(proc, log, b'"url"', 1, "the baseline server")
            yield server
        finally:
            await server.stop()

    @asynccontextmanager
    async def redis(self) -> AsyncIterator[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        port, log = free_port(), self._file("redis", ".log")
        proc = await _spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--protected-mode", "no"], log, None)
        server = Server(proc, port, log)
        try:
            await _wait_for(proc, log, b"Ready to accept connections", 1, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            await server.stop()
