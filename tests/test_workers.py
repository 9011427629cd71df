"""``switchboard serve --workers N``, for real: a parent process and its worker processes on one
port (SO_REUSEPORT), each worker its own node on a real Redis (tests/services.py). Users on
different workers chat as on one server; SIGTERM to the parent closes every client with 1001
and everything exits; a worker that dies is restarted; workers stop by themselves when their
parent is killed; SIGHUP reloads every worker once; the memory backend, port 0 and a port in
use are refused before anything starts.

Every wait is bounded and waits for an event (a log line of the parent or a worker, a frame, a
process's exit through a pidfd), never for a fixed time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.conftest import SECRET, WS, make_token
from tests.services import free_port

pytest_plugins = ["tests.services"]

START_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 3
#: attempts at landing two connections on different workers (each attempt a fresh connection;
#: the kernel spreads them over the workers' sockets by a hash of the client's address and port)
ATTEMPTS = 40


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k not in ("SWITCHBOARD_CONFIG", "REDIS_URL")}
    env.update({"JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"})
    return env


def _config(redis_url: str, port: int) -> str:
    return (f"server:\n  port: {port}\n  node_id: wk\n  shutdown_timeout: {SHUTDOWN_TIMEOUT}\n"
            f"backend:\n  type: redis\n  redis:\n    url: {redis_url}\n"
            "plugins:\n  enabled: [chat, presence]\npresence:\n  grace_period: 0\n"
            "logging:\n  format: json\n")


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _gone(pid: int, timeout: float) -> None:
    """Wait (bounded) until ``pid``, a process that is not our child, has exited: its pidfd
    becomes readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        if _running(pid):
            await asyncio.wait_for(exited, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class Workers:
    """``python -m server serve --workers N`` and its JSON log lines (the parent's and the
    workers', on the same stderr), read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("{"):
                async with self._changed:
                    self.events.append(json.loads(line))
                    self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def found(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())]

    async def wait_event(self, event: str, *, count: int = 1, timeout: float = START_TIMEOUT,
                         **fields: Any) -> dict[str, Any]:
        """The ``count``-th log event named ``event`` with ``fields``, once it is written."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(
                    lambda: len(self.found(event, **fields)) >= count or self.ended)
        except TimeoutError:
            raise AssertionError(f"no {event} {fields} within {timeout}s:\n" + self.log()) from None
        matches = self.found(event, **fields)
        assert len(matches) >= count, f"exited without {event} {fields}:\n" + self.log()
        return matches[count - 1]

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def worker_pids(self) -> set[int]:
        return {e["pid"] for e in self.found("worker_started")}

    async def wait(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code

    async def close(self) -> None:
        """Stop the parent (SIGTERM, then SIGKILL) and make sure no worker is left."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), SHUTDOWN_TIMEOUT + 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for pid in self.worker_pids():  # a worker stops by itself once its parent is gone
            await _gone(pid, SHUTDOWN_TIMEOUT + 5)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def _serve(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "-c", str(tmp_path / "websocket.yaml"), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=_env(), cwd=str(tmp_path))


async def start_workers(tmp_path: Path, redis_url: str, server_options: str = "") -> Workers:
    """``serve --workers 2`` on a free port, both listening (``workers_ready``);
    ``server_options`` are YAML lines added to the config's ``server`` section."""
    for attempt in range(3):  # the free port may be taken before the workers bind it
        port = free_port()
        config = _config(redis_url, port).replace("server:\n", "server:\n" + server_options, 1)
        (tmp_path / "websocket.yaml").write_text(config)
        server = Workers(await _serve(tmp_path, "--workers", "2"), port)
        try:
            await server.wait_event("workers_ready")
        except AssertionError:
            await server.close()
            if server.found("listen_failed") and attempt < 2:
                continue
            raise
        return server
    raise AssertionError("unreachable")


@pytest.fixture
async def workers(tmp_path: Path, redis_url: str) -> AsyncIterator[Workers]:
    """Two workers on a free port, both listening (``workers_ready``)."""
    server = await start_workers(tmp_path, redis_url)
    try:
        yield server
    finally:
        await server.close()
    assert not any(_running(pid) for pid in server.worker_pids())


async def _connect(session: aiohttp.ClientSession, server: Workers, user: str) -> WS:
    raw = await session.ws_connect(f"{server.url}/ws", params={"token": make_token(user)})
    ws = WS(raw)
    ws.connected = await ws.recv_type("connected")
    return ws


async def _on_two_workers(session: aiohttp.ClientSession, server: Workers) -> tuple[WS, WS]:
    """Two connections (of two users) that landed on different workers."""
    first = await _connect(session, server, "alice")
    assert first.connected is not None
    for _ in range(ATTEMPTS):
        # always bob: a closed try that a worker has not forgotten yet is not a third user
        other = await _connect(session, server, "bob")
        assert other.connected is not None
        if other.connected["data"]["node"] != first.connected["data"]["node"]:
            return first, other
        await other.close()
    raise AssertionError(f"{ATTEMPTS} connections all landed on {first.connected['data']['node']}")


async def _joined(ws: WS, room: str) -> None:
    joined = await ws.request("join", room=room)
    assert joined["type"] == "joined", joined


async def test_users_on_two_workers_chat_and_sigterm_stops_everything(workers: Workers) -> None:
    ready = workers.found("workers_ready")[0]
    assert ready["workers"] == 2 and len(ready["pids"]) == 2
    assert {e["node"] for e in workers.found("server_listening")} == {"wk-1", "wk-2"}
    async with aiohttp.ClientSession() as session:
        alice, bob = await _on_two_workers(session, workers)
        assert alice.connected and bob.connected
        nodes = {alice.connected["data"]["node"], bob.connected["data"]["node"]}
        assert nodes == {"wk-1", "wk-2"}
        assert bob.connected["data"]["online_count"] == 2  # presence is shared
        for ws in (alice, bob):
            await _joined(ws, "lobby")
        ack = await alice.request("message", room="lobby", data={"content": "hello, other worker"})
        assert ack["type"] == "ack", ack
        got = await bob.recv_type("message")
        assert got["data"]["content"] == "hello, other worker" and got["from"]["id"] == "alice"
        reply = await bob.request("message", room="lobby", data={"content": "hello back"})
        assert reply["type"] == "ack", reply
        got = await alice.recv_type("message")
        assert got["data"]["content"] == "hello back" and got["offset"] == reply["data"]["offset"]

        started = time.monotonic()
        workers.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(alice.closed(timeout=SHUTDOWN_TIMEOUT + 2),
                                     bob.closed(timeout=SHUTDOWN_TIMEOUT + 2))
        assert list(codes) == [1001, 1001]
        assert await workers.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0, workers.log()
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT + 2
    assert [e["worker"] for e in workers.found("server_stopped")] in ([1, 2], [2, 1])
    assert workers.found("workers_stopped")[-1]["code"] == 0
    assert workers.found("workers_stopping")[0]["signal"] == "SIGTERM"


async def test_a_worker_that_dies_is_logged_and_restarted(workers: Workers) -> None:
    victim = workers.found("worker_started", worker=1)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    exited = await workers.wait_event("worker_exited", worker=1)
    assert exited["code"] == -signal.SIGKILL and exited["expected"] is False
    assert exited["level"] == "error"
    await workers.wait_event("worker_ready", worker=1, count=2)
    again = workers.found("worker_started", worker=1)[1]
    assert again["pid"] != victim and again["node"] == "wk-1"  # same number, same node id
    async with aiohttp.ClientSession() as session:  # both serve again
        alice, bob = await _on_two_workers(session, workers)
        workers.proc.send_signal(signal.SIGTERM)
        assert [await ws.closed(timeout=SHUTDOWN_TIMEOUT + 2) for ws in (alice, bob)] == [1001, 1001]
    assert await workers.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0, workers.log()


async def test_workers_stop_by_themselves_when_the_parent_is_killed(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2
    workers.proc.kill()
    assert await workers.wait(timeout=SHUTDOWN_TIMEOUT + 5) == -signal.SIGKILL  # stderr closed:
    for pid in pids:                                     # the workers, its last writers, are gone
        await _gone(pid, SHUTDOWN_TIMEOUT + 5)
    assert len(workers.found("parent_gone")) == 2
    assert len(workers.found("server_stopped")) == 2


async def test_sighup_to_the_parent_reloads_every_worker_once(workers: Workers,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "websocket.yaml"
    config.write_text(config.read_text() + "rate_limit:\n  burst: 7\n")
    workers.proc.send_signal(signal.SIGHUP)
    sent = await workers.wait_event("workers_reload")
    assert sent["worker"] == 1  # one worker: its reload has every other node re-read its file
    for number in (1, 2):
        done = await workers.wait_event("config_reloaded", worker=number)
        assert done["applied"] == ["rate_limit.burst"]
    workers.proc.send_signal(signal.SIGTERM)
    assert await workers.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0, workers.log()
    assert len(workers.found("config_reloaded")) == 2


async def _refused(tmp_path: Path, config: str, *args: str) -> tuple[int, str]:
    (tmp_path / "websocket.yaml").write_text(config)
    proc = await _serve(tmp_path, *args)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    return await proc.wait(), err.decode()  # it has exited: communicate() reaped it


async def test_the_memory_backend_with_workers_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    code, err = await _refused(tmp_path, f"server:\n  port: {free_port()}\n", "--workers", "2")
    assert code == 2
    assert err.strip() == (
        "switchboard serve: --workers 2 needs backend.type: redis: with the memory backend "
        "each process would be a separate server (rooms, presence and history not shared)")


async def test_port_0_with_workers_is_refused(tmp_path: Path, redis_url: str) -> None:
    code, err = await _refused(tmp_path, _config(redis_url, 8000), "--workers", "2", "--port", "0")
    assert code == 2
    assert "--workers 2 needs a fixed port, not 0" in err and "different free port" in err
    assert "server_listening" not in err and "worker_started" not in err


async def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    code, err = await _refused(tmp_path, "", "--workers", "0")
    assert code == 2 and "--workers: must be at least 1, got 0" in err


async def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path,
                                                                 redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await _refused(tmp_path, _config(redis_url, port), "--workers", "2")
    assert code == 1
    assert "listen_failed" in err and "worker_started" not in err
