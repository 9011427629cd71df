"""The shipped ``config/nginx.conf`` run by Debian's nginx (tests/services.NginxServer) in front
of two real ``switchboard serve`` processes (tests/proc.py) on one Redis: clients connect
through nginx, land on different nodes and talk in one room; the HTTP API, the health checks
and the demo page answer through it; the client's address reaches the nodes in
X-Forwarded-For, and the access log never holds a token.

Only what cannot work on a test machine is changed in the shipped file (see ``render``): the
listen address, the upstream servers, the access log's path and nginx's temporary
directories. ``test_the_shipped_file_is_what_nginx_ran`` holds every other directive equal.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.testing import SwitchboardClient
from tests.conftest import make_token
from tests.proc import ServerProcess, start_server
from tests.services import NginxServer

pytest_plugins = ["tests.services"]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "nginx.conf"
NODES = ("node-a", "node-b")
#: a client address the nodes refuse: it can only be known to them through X-Forwarded-For
REFUSED_IP = "127.0.0.3"
#: connections opened (at most) to see both nodes
MAX_TRIES = 8
TIMEOUT = aiohttp.ClientTimeout(total=10)
#: what the test adds to the shipped file: nginx's temporary files under the test's directory
TEMP_PATHS = [f"{name}_temp_path {{tmp}}/{name};"
              for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]

NODE_CONFIG = """\
server:
  node_id: {node}
  # nginx connects from 127.0.0.1: its X-Forwarded-For is believed
  trusted_proxies: [127.0.0.1/32]
  shutdown_timeout: 2
security:
  connect_rate_per_ip: 0
  ip_blacklist_enabled: true
  ip_blacklist: [{refused}]
backend:
  type: redis
  redis: {{url: "{url}", prefix: sb-nginx-test}}
plugins:
  enabled: [chat]
logging:
  format: json
"""


# --- the shipped file, rendered for the test --------------------------------------------------
def render(text: str) -> str:
    """The shipped file as a tests/services.NginxServer template: the ``listen`` line becomes
    ``listen 127.0.0.1:{listen_port};``, the upstream's ``server`` lines ``{upstreams}``, the
    access log goes to ``{tmp}/access.log`` (same format), and the temporary paths go under
    ``{tmp}`` (first lines of ``http``). Every other line is kept as it is."""
    out: list[str] = []
    in_upstream = False
    for line in text.splitlines():
        stripped = line.strip()
        indent = line[:len(line) - len(line.lstrip())]
        if stripped.startswith("upstream ") and stripped.endswith("{"):
            in_upstream = True
        elif in_upstream and stripped == "}":
            in_upstream = False
        if stripped.startswith("listen "):
            out.append(indent + "listen 127.0.0.1:{listen_port};")
        elif in_upstream and stripped.startswith("server "):
            if "{upstreams}" not in out[-1]:
                out.append(indent + "{upstreams}")
        elif stripped.startswith("access_log "):
            out.append(indent + re.sub(r"^access_log\s+\S+", "access_log {tmp}/access.log", stripped))
        else:
            out.append(line)
            if stripped == "http {":
                out += [indent + "    " + path for path in TEMP_PATHS]
    return "\n".join(out) + "\n"


def directives(text: str) -> list[tuple[tuple[str, ...], str]]:
    """nginx's statements in order, comments dropped, whitespace normalised: ``(blocks, text)``
    where ``blocks`` are the heads of the enclosing blocks (``("http", "upstream switchboard")``)
    and ``text`` ends with ``;``, ``{`` or ``}``."""
    found: list[tuple[tuple[str, ...], str]] = []
    stack: list[str] = []
    words: list[str] = []
    word = ""
    quote = ""
    comment = False
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote:
            word += char
            quote = "" if char == quote else quote
        elif char in "'\"":
            word += char
            quote = char
        elif char == "#":
            comment = True
        elif char.isspace() or char in ";{}":
            if word:
                words.append(word)
                word = ""
            if char == ";":
                found.append((tuple(stack), " ".join(words) + ";"))
                words = []
            elif char == "{":
                found.append((tuple(stack), " ".join(words) + " {"))
                stack.append(" ".join(words))
                words = []
            elif char == "}":
                stack.pop()
                found.append((tuple(stack), "}"))
        else:
            word += char
    assert not stack and not words and not word, "unbalanced nginx config"
    return found


def _swapped(statement: tuple[tuple[str, ...], str]) -> bool:
    blocks, text = statement
    return (text.startswith(("listen ", "access_log "))
            or (bool(blocks) and blocks[-1].startswith("upstream ") and text.startswith("server ")))


def _injected(statement: tuple[tuple[str, ...], str]) -> bool:
    return bool(re.match(r"\w+_temp_path ", statement[1]))


# --- the cluster ------------------------------------------------------------------------------
@dataclass
class Cluster:
    nodes: list[ServerProcess]
    nginx: NginxServer

    @property
    def ws_url(self) -> str:
        return self.nginx.ws_url + "/ws"


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[Cluster]:
    nodes: list[ServerProcess] = []
    nginx = NginxServer([], render(SHIPPED.read_text(encoding="utf-8")))
    try:
        for name in NODES:
            (tmp_path / name).mkdir()
        results = await asyncio.gather(
            *(start_server(tmp_path / name, NODE_CONFIG.format(node=name, url=redis_url,
                                                                refused=REFUSED_IP))
              for name in NODES), return_exceptions=True)
        nodes = [r for r in results if isinstance(r, ServerProcess)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        nginx.upstreams = [f"127.0.0.1:{node.port}" for node in nodes]
        await asyncio.to_thread(nginx.start)
        yield Cluster(nodes, nginx)
    finally:
        await asyncio.to_thread(nginx.stop)
        codes = await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)
        nginx.close()
        assert codes == [0] * len(nodes), [n.lines[-5:] for n in nodes]


async def connect(session: aiohttp.ClientSession, cluster: Cluster, user: str) -> SwitchboardClient:
    ws = await session.ws_connect(cluster.ws_url, params={"token": make_token(user, username=user)})
    client = SwitchboardClient(ws)
    client.connected = await client.recv_type("connected")
    return client


async def one_per_node(session: aiohttp.ClientSession, cluster: Cluster) -> list[SwitchboardClient]:
    """Connect through nginx until two connections are on different nodes (bounded); the
    others are closed. nginx's least_conn sends the second connection to the other node, but
    the test only relies on the two being seen within MAX_TRIES."""
    first: dict[str, SwitchboardClient] = {}
    extra: list[SwitchboardClient] = []
    try:
        for i in range(MAX_TRIES):
            client = await connect(session, cluster, f"user-{i}")
            assert client.connected is not None
            node = client.connected["data"]["node"]
            assert node in NODES
            (extra.append(client) if node in first else first.setdefault(node, client))
            if len(first) == len(NODES):
                return list(first.values())
        raise AssertionError(f"{MAX_TRIES} connections through nginx all went to {set(first)}")
    finally:
        for client in extra:
            await client.close()


async def messages_before_pong(client: SwitchboardClient) -> list[dict[str, Any]]:
    """The ``message`` frames this connection got and has not read yet (a ping's pong comes
    after every frame the server sent before it)."""
    return [f for f in await client.until_pong() if f["type"] == "message"]


async def say(sender: SwitchboardClient, receiver: SwitchboardClient, room: str, text: str) -> dict[str, Any]:
    """``sender`` posts ``text`` to ``room``; ``receiver`` gets it exactly once, with the ack's id
    and offset; the sender gets no copy of its own."""
    ack = await sender.request("message", room=room, data={"content": text})
    assert ack["type"] == "ack", ack
    got = await receiver.recv_type("message")
    assert got["room"] == room and got["data"]["content"] == text
    assert got["from"]["id"] == sender.connected["data"]["user"]["id"]  # type: ignore[index]
    assert (got["id"], got["offset"]) == (ack["data"]["id"], ack["data"]["offset"])
    assert await messages_before_pong(receiver) == []  # not twice
    assert await messages_before_pong(sender) == []  # no copy to the sending connection
    return got


# --- tests ------------------------------------------------------------------------------------
def test_the_shipped_file_uses_no_placeholder_and_renders_only_the_machine_specific_lines() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    for placeholder in ("{listen_port}", "{upstreams}", "{tmp}"):
        assert placeholder not in text
    shipped = directives(text)
    assert [s for s in shipped if s[1].startswith("listen ")] == [(("http", "server"), "listen 80;")]
    assert [s for s in shipped if _swapped(s) and s[1].startswith("server ")] == [
        (("http", "upstream switchboard"), "server switchboard-1:8000;"),
        (("http", "upstream switchboard"), "server switchboard-2:8000;")]
    assert [s for s in shipped if _injected(s)] == []
    # the choices docs/deploy.md describes, in the file itself
    statements = {text for _, text in shipped}
    for wanted in ("least_conn;", "proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $connection_upgrade;",
                   "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                   "proxy_set_header X-Real-IP $remote_addr;", "proxy_buffering off;",
                   "location = /ws {", "location / {", "map $http_upgrade $connection_upgrade {"):
        assert wanted in statements, wanted
    timeouts = [t for t in statements if t.startswith(("proxy_read_timeout ", "proxy_send_timeout "))]
    assert len(timeouts) == 2 and all(int(t.split()[1].rstrip("s;")) > 60 for t in timeouts)  # > pong_wait
    (log_format,) = [t for t in statements if t.startswith("log_format ")]
    for variable in ("$request ", "$request_uri", "$args", "$query_string", "$arg_"):
        assert variable not in log_format + " ", variable  # the token is in the query string


async def test_two_nodes_behind_the_shipped_nginx(cluster: Cluster) -> None:
    nginx = cluster.nginx
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # --- the shipped file is what nginx runs
        ran = directives(nginx.config_path.read_text(encoding="utf-8"))
        shipped = directives(SHIPPED.read_text(encoding="utf-8"))
        assert [s for s in ran if not _swapped(s) and not _injected(s)] == \
               [s for s in shipped if not _swapped(s)]
        assert [s[1] for s in ran if _swapped(s)] == [
            f"access_log {nginx.dir}/access.log switchboard;",
            *(f"server {u};" for u in nginx.upstreams),
            f"listen 127.0.0.1:{nginx.port};"]
        assert [s[1] for s in ran if _injected(s)] == [p.replace("{tmp}", str(nginx.dir)) for p in TEMP_PATHS]

        # --- two clients through nginx, on two nodes, one room, a message each way
        alice, bob = await one_per_node(session, cluster)
        assert alice.connected and bob.connected
        assert {alice.connected["data"]["node"], bob.connected["data"]["node"]} == set(NODES)
        assert alice.connected["data"]["heartbeat"] == {"interval": 25.0, "timeout": 60.0}
        for client in (alice, bob):
            joined = await client.request("join", room="lobby")
            assert joined["type"] == "joined", joined
        sent = [await say(alice, bob, "lobby", "hello from " + alice.connected["data"]["node"]),
                await say(bob, alice, "lobby", "hello back from " + bob.connected["data"]["node"])]

        # --- the HTTP API through nginx: the room's history, kept once, shared by both nodes
        user = alice.connected["data"]["user"]["id"]
        headers = {"Authorization": f"Bearer {make_token(user)}"}
        async with session.get(nginx.url + "/api/rooms/lobby/history", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            history = await resp.json()
        assert [(m["id"], m["offset"]) for m in history["messages"]] == [(m["id"], m["offset"]) for m in sent]

        # --- health checks, the demo page and its client through nginx; /metrics is not public
        seen = set()
        for _ in range(4):
            async with session.get(nginx.url + "/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "ok"
                seen.add(body["node"])
        assert seen <= set(NODES) and seen
        async with session.get(nginx.url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ready"
        async with session.get(nginx.url + "/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "switchboard" in (await resp.text()).lower()
        async with session.get(nginx.url + "/static/switchboard.js") as resp:
            assert resp.status == 200
        async with session.get(nginx.url + "/metrics") as resp:
            assert resp.status == 403  # nginx's deny: the nodes would answer 200
        for node in cluster.nodes:  # ... as they do when asked directly
            async with session.get(node.url + "/metrics") as resp:
                assert resp.status == 200
        await alice.close()
        await bob.close()

    # --- X-Forwarded-For: the nodes see the client behind nginx (trusted_proxies), so a
    # blacklisted client address is refused by the node although nginx connects from 127.0.0.1
    for local, status in ((REFUSED_IP, 403), ("127.0.0.2", 101)):
        connector = aiohttp.TCPConnector(local_addr=(local, 0))
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
            if status == 403:
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await connect(session, cluster, "mallory")
                assert info.value.status == 403
            else:
                await (await connect(session, cluster, "carol")).close()

    # --- the access log (the shipped format) names both nodes and never a token
    await asyncio.to_thread(nginx.stop)  # writes what was still open
    log = (nginx.dir / "access.log").read_text()
    for node in cluster.nodes:
        assert f"upstream=127.0.0.1:{node.port}" in log
    assert '"GET /ws HTTP/1.1" 101' in log and REFUSED_IP in log
    assert "token" not in log and "eyJ" not in log
