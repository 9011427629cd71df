"""``switchboard client``, the real command in a subprocess against a real server.

Scripted: every command through stdin (each waits for its reply, so the output is in order),
with a second user on a plain WebSocket seeing the effects; script files and bad lines; a
refused or unreachable server; reconnecting (re-joining with ``since``, so a message sent
meanwhile arrives in ``missed``) and not reconnecting after a final close; ``--auto-ping``.
Interactive: one session through a pseudo-terminal (pexpect), and Ctrl-D / Ctrl-C, each
followed by ``stty -a`` in the same terminal to show it was put back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from server.keys import NODE
from server.protocol import encode, frame
from tests.conftest import SECRET, connector

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
PLUGINS = ["chat", "plugins.typing_indicator:TypingPlugin", "plugins.presence:PresencePlugin",
           "plugins.notification:NotificationPlugin"]


def ws_url(client: TestClient | TestServer) -> str:
    return str(client.make_url("/ws")).replace("http://", "ws://", 1)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k not in ("JWT_SECRET", "SWITCHBOARD_CONFIG", "NO_COLOR")}
    env.update({"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    return env


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "client.yaml"
    path.write_text(f"auth:\n  secret: {SECRET}\n")
    return str(path)


class CliClient:
    """The command with commands written to its stdin and its stdout read as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Read lines until a frame of ``type_`` whose top-level ``fields`` match."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"the client exited before a {type_!r} frame; saw {self.seen}"
                frame = json.loads(line)
                self.seen.append(frame)
                if frame.get("type") == type_ and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def finish(self) -> tuple[int, str]:
        """Close stdin (end of the commands) and wait: the exit status and stderr."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            code = await self.proc.wait()
            return code, (await self.proc.stderr.read()).decode()


async def start_cli(tmp_path: Path, url: str, *args: str) -> CliClient:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "client", "-c", config_file(tmp_path), "--url", url, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path)
    return CliClient(proc)


async def run_cli(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "client", "-c", config_file(tmp_path), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    code = await proc.wait()  # it has exited: communicate() read to EOF and reaped it
    return code, [json.loads(line) for line in out.splitlines()], err.decode()


@pytest.fixture
async def server(make_server: Any) -> TestClient:
    """Chat, typing, presence and notification on; the filter masks "darn"."""
    client: TestClient = await make_server({
        "plugins": {"enabled": PLUGINS},
        "messages": {"filter": {"enabled": True, "action": "mask", "words": ["darn"]}}})
    return client


async def test_script_drives_every_command(tmp_path: Path, server: TestClient) -> None:
    bob = await connector(server)("bob", username="bob")
    await bob.request("join", room="lobby")
    cli = await start_cli(tmp_path, ws_url(server), "--username", "alice", "--sub", "u-alice",
                          "--email", "a@example.com", "--roles", "admin")
    connected = await cli.expect("connected")
    assert connected["data"]["user"] == {"id": "u-alice", "username": "alice"}

    await cli.send("join lobby")
    joined = await cli.expect("joined", reply_to="c1")
    assert joined["room"] == "lobby" and joined["data"]["members_count"] == 2
    assert (await bob.recv_type("user_joined"))["data"]["user"]["id"] == "u-alice"

    await cli.send("text hello all")
    await cli.expect("ack", reply_to="c2")
    got = await bob.recv_type("message")
    assert got["room"] == "lobby" and got["data"]["content"] == "hello all"
    assert got["from"] == {"id": "u-alice", "username": "alice"}

    await cli.send("to bob psst")
    await cli.expect("ack", reply_to="c3")
    private = await bob.recv_type("message")
    assert private["data"]["content"] == "psst" and "room" not in private

    await cli.send("typing on")
    assert (await bob.recv_type("typing"))["data"]["is_typing"] is True
    await cli.send("typing off")
    assert (await bob.recv_type("typing"))["data"]["is_typing"] is False

    await cli.send("presence away")
    await cli.expect("ack", reply_to="c4")
    assert (await bob.recv_type("presence"))["data"]["status"] == "away"

    await cli.send("notification bob Deploy done")
    await cli.expect("ack", reply_to="c5")
    note = await bob.recv_type("notification")
    assert note["data"]["title"] == "Deploy done"

    await cli.send("history 5")
    history = await cli.expect("history", reply_to="c6")
    assert [m["data"]["content"] for m in history["data"]["messages"]] == ["hello all"]
    await cli.send("history @bob 1")  # the private conversation with bob
    private_history = await cli.expect("history", reply_to="c7")
    assert private_history["data"]["to"] == "bob"
    assert [m["data"]["content"] for m in private_history["data"]["messages"]] == ["psst"]

    await bob.request("message", room="lobby", data={"content": "hi alice"})
    incoming = await cli.expect("message")
    assert incoming["data"]["content"] == "hi alice" and incoming["from"]["id"] == "bob"

    await cli.send("who")
    who = await cli.expect("client.who")
    assert {u["user_id"] for u in who["data"]["users"]} == {"u-alice", "bob"}

    await cli.send("ping")
    await cli.expect("pong", reply_to="c8")
    rtt = await cli.expect("client.rtt")
    assert rtt["data"]["reply_to"] == "c8" and 0 < rtt["data"]["ms"] < TIMEOUT * 1000

    await cli.send('json {"type": "ping", "id": "raw-1"}')
    await cli.expect("pong", reply_to="raw-1")
    await cli.send("json this is not json")  # sent as typed: no id, so nothing waits for it
    assert (await cli.expect("error"))["data"]["code"] == "INVALID_JSON"

    await cli.send("help")
    await cli.send("leave")
    left = await cli.expect("left", reply_to="c9")
    assert left["room"] == "lobby"
    assert (await bob.recv_type("user_left"))["data"]["user"]["id"] == "u-alice"
    await cli.send("quit")
    code, err = await cli.finish()
    assert code == 0, err
    assert "notification <user> <title>" in err and "history [@user] [n]" in err  # help, on stderr


async def test_script_file_bad_lines_are_reported_and_the_rest_runs(tmp_path: Path,
                                                                    server: TestClient) -> None:
    script = tmp_path / "commands.txt"
    script.write_text("# a comment, then a blank line\n\ntext before joining\nfrobnicate now\n"
                      "history -3\nwait soon\nping\njoin r\ntext in r\n")
    code, frames, err = await run_cli(tmp_path, "--url", ws_url(server), "--username", "carol",
                                      "--script", str(script))
    assert code == 1
    assert [f["type"] for f in frames] == ["connected", "pong", "client.rtt", "joined", "ack"]
    assert "line 3: no current room: join one first" in err
    assert "line 4: unknown command 'frobnicate' (type help)" in err
    assert "line 5: usage: history [@user] [n] (n a positive number, not '-3')" in err
    assert "line 6: usage: wait <seconds> (not a number: 'soon')" in err
    assert "Traceback" not in err


async def test_connection_failures_exit_non_zero_with_a_clear_message(tmp_path: Path,
                                                                      server: TestClient) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, frames, err = await run_cli(tmp_path, "--url", f"ws://127.0.0.1:{port}/ws",
                                      "--username", "dave", stdin=b"ping\n")
    assert code == 1 and frames == []
    assert f"switchboard client: cannot connect to ws://127.0.0.1:{port}/ws: connection refused" in err
    code, frames, err = await run_cli(tmp_path, "--url", ws_url(server), "--token", "not-a-jwt",
                                      stdin=b"ping\n")
    assert code == 1 and frames == []
    assert re.search(r"cannot connect to ws://\S+: 401 UNAUTHORIZED: invalid token", err), err
    assert "Traceback" not in err


async def test_reconnects_and_rejoins_with_since(tmp_path: Path, server: TestClient) -> None:
    bob = await connector(server)("bob")
    await bob.request("join", room="lobby")
    cli = await start_cli(tmp_path, ws_url(server), "--username", "erin")
    await cli.expect("connected")
    await cli.send("join lobby")
    await cli.expect("joined", reply_to="c1")
    await bob.request("message", room="lobby", data={"content": "before"})
    await cli.expect("message")
    hub = server.server.app[NODE].hub
    for conn in hub.user_connections("erin"):
        conn.close(4010, "heartbeat timeout")
    # sent at once: the client waits at least 0.125 s before it reconnects
    await bob.request("message", room="lobby", data={"content": "while away"})
    gone = await cli.expect("client.disconnected")
    assert gone["data"]["code"] == 4010
    await cli.expect("connected")
    rejoined = await cli.expect("joined", room="lobby")
    assert rejoined["data"]["recovered"] is True
    assert [m["data"]["content"] for m in rejoined["data"]["missed"]] == ["while away"]
    await cli.send("text back")  # the current room survived the reconnect
    await cli.expect("ack")
    assert (await bob.recv_type("message"))["data"]["content"] == "back"
    await cli.send("quit")
    code, err = await cli.finish()
    assert code == 0 and "closed 4010 (heartbeat timeout): reconnecting in" in err


async def test_a_script_that_ends_while_the_connection_is_lost_exits_1(tmp_path: Path,
                                                                       make_server: Any) -> None:
    server: TestClient = await make_server({"plugins": {"enabled": PLUGINS}})
    cli = await start_cli(tmp_path, ws_url(server), "--username", "ivy")
    await cli.expect("connected")
    await cli.send("join lobby")
    await cli.expect("joined", reply_to="c1")
    await server.server.close()  # the server goes (1001) and does not come back
    assert (await cli.expect("client.disconnected"))["data"]["code"] == 1001
    code, err = await cli.finish()  # the end of the script, while it is still retrying
    assert code == 1, err
    assert "reconnecting in" in err
    assert "the connection was lost and is not back at the end of the script" in err


async def test_a_final_close_is_not_retried(tmp_path: Path, server: TestClient) -> None:
    cli = await start_cli(tmp_path, ws_url(server), "--username", "frank")
    await cli.expect("connected")
    await cli.send("wait 30")
    for conn in server.server.app[NODE].hub.user_connections("frank"):
        conn.close(4503, "kicked")
    assert (await cli.expect("client.disconnected"))["data"] == {"code": 4503, "reason": "kicked"}
    code, err = await cli.finish()
    assert code == 1
    assert "closed 4503 (kicked): not reconnecting" in err


async def test_auto_ping_reports_round_trips(tmp_path: Path, server: TestClient) -> None:
    code, frames, err = await run_cli(tmp_path, "--url", ws_url(server), "--username", "gina",
                                      "--auto-ping", "0.1", stdin=b"wait 0.6\n")
    assert code == 0, err
    rtts = [f for f in frames if f["type"] == "client.rtt"]
    assert len(rtts) >= 2 and all(f["data"]["ms"] > 0 for f in rtts)
    assert len([f for f in frames if f["type"] == "pong"]) == len(rtts)


async def test_auto_ping_drops_a_silent_server_and_reconnects(tmp_path: Path, aiohttp_server: Any) -> None:
    """A server that accepts, says ``connected`` and then never answers (a hung process, a dead
    NAT mapping as far as frames go): the unanswered ping makes the client reconnect."""
    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_frame(encode(frame("connected", {"user": {"id": "h"}, "rooms": []})), WSMsgType.TEXT)
        async for _ in ws:  # reads, never replies
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", silent)
    server = await aiohttp_server(app)
    cli = await start_cli(tmp_path, ws_url(server), "--username", "hana", "--auto-ping", "0.2")
    await cli.expect("connected")
    await cli.send("wait 30")
    assert (await cli.expect("client.disconnected"))["data"]["code"] == 4010
    await cli.expect("connected")  # back, on its own
    cli.proc.terminate()
    _, err = await cli.finish()
    assert "no pong within 0.2s: reconnecting" in err


# --- interactive, through a pseudo-terminal --------------------------------------------------------
def spawn(tmp_path: Path, url: str) -> pexpect.spawn:
    """The interactive client in a fresh pty; ``stty -a`` runs in it after the client exits."""
    command = (f"{sys.executable} -m server client -c {config_file(tmp_path)} --url {url} "
               "--username alice --no-color; echo EXIT=$?; stty -a")
    env = cli_env(tmp_path) | {"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    return pexpect.spawn("/bin/sh", ["-c", command], env=env, cwd=str(tmp_path),
                         dimensions=(30, 120), timeout=TIMEOUT, encoding="utf-8")


def styled(*parts: str) -> str:
    """A pattern for text printed in styled fragments: escape sequences may come between."""
    return r"(?:\x1b\[[0-9;?]*[A-Za-z])*".join(re.escape(p) for p in parts)


def assert_terminal_restored(child: pexpect.spawn, status: int) -> None:
    child.expect(r"EXIT=(\d+)")
    assert int(child.match.group(1)) == status
    child.expect(pexpect.EOF)
    stty = child.before
    assert re.search(r"(?<![-\w])icanon\b", stty) and re.search(r"(?<![-\w])echo\b", stty), stty


async def test_interactive_session(tmp_path: Path, server: TestClient) -> None:
    bob = await connector(server)("bob", username="bob")
    await bob.request("join", room="lobby")
    loop = asyncio.get_running_loop()

    def on_loop(coro: Any) -> Any:  # from the pexpect thread: run on the server's loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(TIMEOUT)

    def session() -> None:
        child = spawn(tmp_path, ws_url(server))
        child.expect("connected")
        child.expect(r"alice@->")
        child.sendline("join lobby")
        child.expect(styled("joined       ", "#lobby", " (2 members)"))
        child.expect(r"alice@lobby>")
        child.sendline("text hi bob")
        child.expect(r"ack")
        message = on_loop(bob.recv_type("message"))
        assert message["data"]["content"] == "hi bob" and message["from"]["username"] == "alice"
        on_loop(bob.request("message", room="lobby", data={"content": "hello alice"}))
        child.expect(styled("#lobby ", "bob: ", "hello alice"))  # printed above the prompt
        child.sendline("text oh darn it")  # the sender is shown what bob got
        child.expect(styled(", delivered as ", "oh **** it"))
        assert on_loop(bob.recv_type("message"))["data"]["content"] == "oh **** it"
        child.sendline("ping")
        child.expect(r"pong\s+(?:\x1b\[0m)?\d+\.\d\d ms")
        child.sendline("help")
        child.expect(r"notification <user> <title>")
        child.sendline("frobnicate")
        child.expect(r"unknown command 'frobnicate'")
        child.sendline("quit")
        assert_terminal_restored(child, 0)

    await asyncio.wait_for(asyncio.to_thread(session), 4 * TIMEOUT)
    assert "join lobby" in (tmp_path / ".switchboard_history").read_text()


async def test_the_prompt_shows_the_room_joined_on_connect(tmp_path: Path, make_server: Any) -> None:
    """``rooms.default_rooms`` joins alice to general as she connects: that is her current room
    (the prompt says so and ``text`` goes there); a room of one is "1 member"."""
    server: TestClient = await make_server({"plugins": {"enabled": PLUGINS},
                                            "rooms": {"default_rooms": ["general"]}})
    bob = await connector(server)("bob", username="bob")
    loop = asyncio.get_running_loop()

    def session() -> None:
        child = spawn(tmp_path, ws_url(server))
        child.expect(r"alice@general>")
        child.sendline("text hello general")
        child.expect(r"ack")
        message = asyncio.run_coroutine_threadsafe(bob.recv_type("message"), loop).result(TIMEOUT)
        assert message["room"] == "general" and message["data"]["content"] == "hello general"
        child.sendline("join solo")
        child.expect(styled("joined       ", "#solo", " (1 member)"))
        child.expect(r"alice@solo>")
        child.sendline("quit")
        assert_terminal_restored(child, 0)

    await asyncio.wait_for(asyncio.to_thread(session), 4 * TIMEOUT)


@pytest.mark.parametrize(("key", "status"), [("\x04", 0), ("\x03", 130)], ids=["ctrl-d", "ctrl-c"])
async def test_interactive_exits_cleanly_on_ctrl_d_and_ctrl_c(tmp_path: Path, server: TestClient,
                                                              key: str, status: int) -> None:
    def session() -> None:
        child = spawn(tmp_path, ws_url(server))
        child.expect(r"alice@->")
        child.send(key)
        assert_terminal_restored(child, status)

    await asyncio.wait_for(asyncio.to_thread(session), 2 * TIMEOUT)
