"""Logging: JSON lines off a TTY and a console format on one; ``conn_id``/``user_id`` on
connection events; client mistakes at info/warning and server faults at error; and no token in
any log line, the access log included, checked on the real server run as a subprocess."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from server.config import LoggingConfig
from server.log import (bind_connection, bind_context, configure_logging, merge_context,
                        reset_context)
from server.plugin_api import Context, Plugin, handles
from tests.conftest import SECRET, WS, Connect, make_token

ROOT = Path(__file__).resolve().parent.parent
CLIENT_LEVELS = {"info", "warning"}


class BoomPlugin(Plugin):
    """A plugin whose handler fails: a server fault."""

    name = "boom"

    @handles("boom")
    async def boom(self, ctx: Context, data: dict[str, Any]) -> None:
        raise RuntimeError("the handler broke")


# --- the real server, as a subprocess --------------------------------------------------------
class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []  # stderr, as read so far
        self.port = 0

    async def wait_listening(self, timeout: float = 20.0) -> None:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while not self.port:
                line = (await self.proc.stderr.readline()).decode()
                assert line, f"the server exited before listening: {self.lines}"
                self.lines.append(line)
                event = json.loads(line)
                if event.get("event") == "server_listening":
                    self.port = int(event["port"])

    async def stop(self, timeout: float = 20.0) -> tuple[list[str], str]:
        """SIGTERM, wait for the exit; returns (every stderr line, stdout)."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            out, err = await self.proc.communicate()
        assert self.proc.returncode == 0, err.decode()
        self.lines += err.decode().splitlines(keepends=True)
        return [line for line in self.lines if line.strip()], out.decode()


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    config = tmp_path / "websocket.yaml"
    config.write_text("plugins:\n  enabled: [chat]\nlogging:\n  level: info\n  format: auto\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k not in ("SWITCHBOARD_CONFIG", "REDIS_URL")}
    env.update(JWT_SECRET=SECRET, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "-c", str(config), "--port", "0",
        cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    server = ServerProcess(proc)
    try:
        await server.wait_listening()
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(200)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_no_token_in_any_log_line_of_the_real_server(server_process: ServerProcess) -> None:
    port = server_process.port
    token = make_token("u1", username="alice")
    signature = token.rsplit(".", 1)[1]
    wrong = make_token("u1", secret="another-secret-0123456789abcdef-xyz")
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/ws"
        ws = WS(await session.ws_connect(url, params={"token": token}))
        connected = await ws.recv_type("connected")
        await ws.send_raw("this is not json")
        assert (await ws.recv_type("error"))["data"]["code"] == "INVALID_JSON"
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url, params={"token": wrong})
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url, headers={"Authorization": f"Bearer {wrong}"})
    # a request line over aiohttp's limit: aiohttp itself logs the start of it
    answer = await raw_request(port, f"GET /ws?token={token}&pad={'x' * 9000} HTTP/1.1\r\n"
                                     "Host: localhost\r\n\r\n".encode())
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    lines, stdout = await server_process.stop()

    everything = "".join(lines) + stdout
    for secret in (token, signature, wrong, wrong.rsplit(".", 1)[1], token[:60]):
        assert secret not in everything
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert stdout.strip() == ""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    conn_id = connected["data"]["connection_id"]
    for name in ("connection_opened", "frame_rejected", "connection_closed"):
        (event,) = by_name[name]
        assert event["conn_id"] == conn_id and event["user_id"] == "u1", event
    assert by_name["frame_rejected"][0]["level"] in CLIENT_LEVELS
    upgrades = [e for e in by_name["http_request"] if e["path"] == "/ws"]
    assert sorted(e["status"] for e in upgrades) == [101, 401, 401]
    assert all("?" not in e["path"] and "query" not in e for e in by_name["http_request"])
    assert [e["level"] for e in by_name["upgrade_refused"]] == ["info", "info"]
    # aiohttp's own record of the malformed request: JSON, a client mistake, the token masked
    (bad_request,) = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert bad_request["level"] == "warning" and "[redacted]" in bad_request["exception"]
    assert {e["level"] for e in events} <= {"info", "warning"}


# --- the level policy, through capture_logs ---------------------------------------------------
@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs(processors=[merge_context]) as captured:  # conn_id, user_id of the task
        yield captured


def only(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    found = [e for e in logs if e["event"] == event]
    assert len(found) == 1, (event, logs)
    return found[0]


async def test_client_mistakes_log_at_info_or_warning(logs: list[dict[str, Any]], connect: Connect,
                                                      client: Any) -> None:
    ws = await connect("u1")
    conn_id = ws.connected["data"]["connection_id"] if ws.connected else None
    await ws.send_raw("{not json")
    await ws.recv_type("error")
    await ws.send("no.such.type", id="x")
    await ws.recv_type("error")
    rejected = [e for e in logs if e["event"] == "frame_rejected"]
    assert [e["code"] for e in rejected] == ["INVALID_JSON", "UNKNOWN_MESSAGE_TYPE"]
    for event in rejected:
        assert event["log_level"] in CLIENT_LEVELS and event["conn_id"] == conn_id
        assert event["user_id"] == "u1"
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", params={"token": "bad.token.value"})
    assert only(logs, "upgrade_refused")["log_level"] in CLIENT_LEVELS
    first = WS(await client.ws_connect("/ws"))
    await first.send("auth", data={"token": "bad.token.value"})
    assert await first.closed() == 4500
    assert only(logs, "auth_failed")["log_level"] in CLIENT_LEVELS
    assert not [e for e in logs if e["log_level"] == "error"]
    assert "bad.token.value" not in repr(logs)


async def test_handler_exception_logs_at_error(logs: list[dict[str, Any]], make_server: Any) -> None:
    client = await make_server({"plugins": {"enabled": ["chat", "tests.test_logging:BoomPlugin"]}})
    ws = WS(await client.ws_connect("/ws", params={"token": make_token("u7")}))
    conn_id = (await ws.recv_type("connected"))["data"]["connection_id"]
    reply = await ws.request("boom")
    assert reply["data"]["code"] == "INTERNAL_ERROR"
    assert (await ws.request("ping"))["type"] == "pong"  # the connection stays
    failed = only(logs, "handler_failed")
    assert failed["log_level"] == "error" and failed["type"] == "boom"
    assert failed["conn_id"] == conn_id and failed["user_id"] == "u7"
    assert failed["exc_info"] is True


# --- configure_logging -----------------------------------------------------------------------
class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_off_a_tty() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="auto"), stream)
    structlog.get_logger("t").bind(conn_id="c1", user_id="u1").info("connection_opened", remote="::1")
    structlog.get_logger("t").debug("below_the_level")
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "connection_opened" and lines[0]["level"] == "info"
    assert lines[0]["conn_id"] == "c1" and lines[0]["user_id"] == "u1" and "timestamp" in lines[0]
    assert lines[1] == {**lines[1], "event": "Error handling request from 127.0.0.1",
                        "level": "error", "logger": "aiohttp.server"}
    assert len(lines) == 2


@pytest.mark.usefixtures("restore_logging")
def test_console_on_a_tty() -> None:
    stream = TtyStream()
    configure_logging(LoggingConfig(format="auto"), stream)
    structlog.get_logger("t").bind(conn_id="c1").warning("frame_rejected", code="INVALID_JSON")
    text = stream.getvalue()
    assert "frame_rejected" in text and "c1" in text and "INVALID_JSON" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tokens_masked_in_messages_fields_and_tracebacks(fmt: str) -> None:
    token = make_token("u1")
    stream = TtyStream()  # the format is forced either way
    configure_logging(LoggingConfig(format=fmt), stream)
    log = structlog.get_logger("t")
    log.info("upgrade", token=token, url=f"/ws?token={token}&rooms=a", header=f"Bearer {token}")
    try:
        raise ValueError(f"bad request line b'GET /ws?token={token[:70]}...'")
    except ValueError:
        log.exception("handler_failed")
        logging.getLogger("aiohttp.server").exception("Error handling request")
    text = stream.getvalue()
    assert "rooms=a" in text and "ValueError" in text and text.count("[redacted]") >= 5
    for secret in (token, token[:70], token.rsplit(".", 1)[1], token.split(".")[1]):
        assert secret not in text


# --- one write a loop turn -------------------------------------------------------------------
class CountingStream(io.StringIO):
    """A stream that keeps each ``write`` apart, as the system calls they become."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.mark.usefixtures("restore_logging")
def test_the_lines_of_a_loop_turn_go_out_in_one_write_in_order() -> None:
    stream = CountingStream()
    configure_logging(LoggingConfig(format="json"), stream)
    log = structlog.get_logger("t")

    async def main() -> list[str]:
        log.info("first", n=1)
        logging.getLogger("aiohttp.server").warning("second")  # the standard library's, between
        log.info("third", n=3)
        pending = list(stream.writes)
        await asyncio.sleep(0)  # the next turn
        await asyncio.sleep(0)
        return pending

    assert asyncio.run(main()) == []  # nothing written within the turn
    assert len(stream.writes) == 1 and stream.writes[0].endswith("\n")
    events = [json.loads(line)["event"] for line in stream.writes[0].splitlines()]
    assert events == ["first", "second", "third"]
    log.info("outside_a_loop")  # start-up, the CLI: at once
    assert len(stream.writes) == 2 and json.loads(stream.writes[1])["event"] == "outside_a_loop"


@pytest.mark.usefixtures("restore_logging")
def test_no_write_splits_a_line_or_passes_what_a_pipe_keeps_whole() -> None:
    """The workers of ``--workers`` share stderr: a write of up to 4 KiB to a pipe is never
    interleaved with another process's, so a turn's lines go in chunks of whole lines."""
    stream = CountingStream()
    configure_logging(LoggingConfig(format="json"), stream)
    log = structlog.get_logger("t")

    async def main() -> None:
        for n in range(100):
            log.info("busy", n=n, filler="x" * 150)
        log.info("long", filler="y" * 6000)  # a line longer than 4 KiB: a write of its own
        await asyncio.sleep(0)

    asyncio.run(main())
    assert len(stream.writes) > 1
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= 4096 or text.count("\n") == 1
    lines = "".join(stream.writes).splitlines()
    assert [json.loads(line).get("n") for line in lines] == [*range(100), None]


def test_a_line_pending_at_exit_is_written(tmp_path: Path) -> None:
    script = ("import asyncio, structlog\n"
              "from server.config import LoggingConfig\n"
              "from server.log import configure_logging\n"
              "configure_logging(LoggingConfig(format='json'))\n"
              "async def main():\n"
              "    structlog.get_logger('t').info('last_words')\n"
              "    raise SystemExit(3)\n"
              "loop = asyncio.new_event_loop()\n"
              "loop.run_until_complete(main())\n")
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 3
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == ["last_words"]


@pytest.mark.usefixtures("restore_logging")
def test_a_connections_fields_are_on_every_line_of_its_task_whoever_logs_it() -> None:
    """``bind_connection`` (the WebSocket handler's, with its Connection): structlog's module
    loggers and the standard library's (aiohttp's, a plugin's own) write its ``conn_id`` and
    ``user_id`` in that task and the tasks it starts, not in other tasks; ``bind_context``
    fields (a worker's number) go on every line until ``reset_context``."""
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream)
    conn = SimpleNamespace(id="c9", user=SimpleNamespace(id="u9"))  # what a Connection has

    async def connection() -> None:
        bind_connection(conn)
        structlog.get_logger("plugins.thing").info("from_structlog")
        logging.getLogger("thirdparty").warning("from_stdlib")
        await asyncio.get_running_loop().create_task(child())

    async def child() -> None:
        structlog.get_logger("t").info("from_a_child_task")

    async def other() -> None:
        structlog.get_logger("t").info("other_task")

    async def main() -> None:
        token = bind_context(worker=2)
        await asyncio.gather(asyncio.create_task(connection()), asyncio.create_task(other()))
        reset_context(token)
        structlog.get_logger("t").info("after_reset")
        await asyncio.sleep(0)

    asyncio.run(main())
    lines = {e["event"]: e for e in map(json.loads, stream.getvalue().splitlines())}
    for name in ("from_structlog", "from_stdlib", "from_a_child_task"):
        assert (lines[name]["conn_id"], lines[name]["user_id"]) == ("c9", "u9"), name
        assert lines[name]["worker"] == 2
    assert "conn_id" not in lines["other_task"] and lines["other_task"]["worker"] == 2
    assert "worker" not in lines["after_reset"]
