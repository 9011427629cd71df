"""The plugin API and registry: entry-point discovery of the example plugin, config sections,
every startup failure naming plugin and type, hook and handler isolation, plugin stages and
``GET /api/protocol``. Test-only plugins live in tests/plugins_for_tests.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.app import create_app
from server.errors import ConfigError, PluginError
from server.keys import REGISTRY
from server.registry import ENTRY_POINT_GROUP, load_plugin_class
from tests.conftest import SECRET, connector, make_config
from tests.plugins_for_tests import Echo

ROOT = Path(__file__).resolve().parent.parent
T = "tests.plugins_for_tests"
MakeServer = Callable[..., Awaitable[TestClient[Any, Any]]]


def enabled(*names: str, **sections: Any) -> dict[str, Any]:
    return {"plugins": {"enabled": list(names), **sections}}


# --- the example plugin: found through its entry point, enabled by name --------------------
def test_example_plugin_is_registered_in_the_entry_point_group() -> None:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "poll"]
    assert len(found) == 1, "install the example first: pip install -e ./examples/poll_plugin"
    ep = found[0]
    assert ep.value == "switchboard_poll:PollPlugin"
    assert ep.dist is not None and ep.dist.name == "switchboard-poll"
    assert ep.load().name == "poll"


async def test_example_plugin_enabled_by_name_serves_real_clients(make_server: MakeServer) -> None:
    without = connector(await make_server(enabled("chat")))
    carol = await without("u3")
    refused = await carol.request("poll.create", room="general", data={"question": "?", "options": ["a", "b"]})
    assert refused["data"]["code"] == "UNKNOWN_MESSAGE_TYPE"  # installed is not enabled

    connect = connector(await make_server(enabled("chat", "poll", poll={"max_options": 3})))
    alice, bob = await connect("u1"), await connect("u2")
    for client in (alice, bob):
        await client.request("join", room="lobby")
    too_many = await alice.request("poll.create", room="lobby",
                                   data={"question": "Lunch?", "options": ["a", "b", "c", "d"]})
    assert too_many["data"]["code"] == "INVALID_MESSAGE"  # plugins.poll.max_options applies
    ack = await alice.request("poll.create", room="lobby", data={"question": "Lunch?", "options": ["pizza", "soup"]})
    poll_id = ack["data"]["poll_id"]
    assert (await bob.recv_type("poll.results"))["data"]["total_votes"] == 0
    assert (await bob.request("poll.vote", data={"poll_id": poll_id, "option": 0}))["type"] == "ack"
    for client in (alice, bob):
        results = await client.recv_type("poll.results")
        if results["data"]["total_votes"] == 0:  # alice's own copy of the opening results
            results = await client.recv_type("poll.results")
        assert results["data"]["options"][0] == {"text": "pizza", "votes": 1}


@pytest.mark.parametrize("section, error", [
    ({"max_options": "many"}, "plugins.poll.max_options: must be an integer, got 'many'"),
    ({"max_options": 1}, "plugins.poll.max_options: "),
    ({"max_optoins": 5}, "plugins.poll.max_optoins: "),
])
def test_invalid_plugin_config_section_fails_startup_with_its_key_path(section: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_app(make_config(enabled("chat", "poll", poll=section)))
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


def test_example_plugin_own_tests_pass() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "examples/poll_plugin/tests", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


# --- startup failures name the plugin and the type ------------------------------------------
@pytest.mark.parametrize("names, message", [
    (["chat", f"{T}:ClaimsJoin"], "client type 'join' is claimed twice: by plugin 'chat' and by plugin 'dupe'"),
    ([f"{T}:SyncHandler"], "plugin 'sync', type 'sync.go': handler must be 'async def'"),
    ([f"{T}:WrongSignature"], "plugin 'badsig', type 'badsig.go': handler WrongSignature.go(self, ctx: 'Context') "
                              "-> 'None' must take (self, ctx, data)"),
    (["chat", "nosuch"], "plugins.enabled: unknown plugin 'nosuch' (installed: "),
    ([f"{T}:NotAPlugin"], f"plugin '{T}:NotAPlugin': <class '{T}.NotAPlugin'> is not a subclass of "
                          "server.plugin_api.Plugin"),
    ([f"{T}:Missing"], f"plugin '{T}:Missing': cannot import"),
    ([f"{T}:Nameless"], f"plugin '{T}:Nameless': class Nameless needs a 'name' of letters, digits"),
    ([f"{T}:ClaimsPing"], "plugin 'pinger': client type 'ping' is reserved by the core"),
    ([f"{T}:SyncHook"], "plugin 'synchook', hook 'on_connect': must be 'async def'"),
    ([f"{T}:BadSchema"], "plugin 'badschema', type 'bad.schema': schema must be a pydantic BaseModel"),
    ([f"{T}:EmitsCore"], "plugin 'emitserror': server type 'error' is reserved by the core"),
    ([f"{T}:Echo", f"{T}:EchoTwin"], "server type 'echo' is claimed twice: by plugin 'echo' and by plugin 'echotwin'"),
    (["chat", "plugins.chat:ChatPlugin"], "plugins.enabled: plugin 'chat' is listed twice"),
    ([f"{T}:InitFails"], "plugin 'initfails': cannot be created: RuntimeError: cannot open its file"),
    ([f"{T}:BadStage"], "plugin 'badstage': stage <object object at"),
])
def test_bad_plugins_fail_startup_naming_plugin_and_type(names: list[str], message: str) -> None:
    with pytest.raises(PluginError) as info:
        create_app(make_config(enabled(*names)))
    assert str(info.value).startswith(message), str(info.value)


def test_entry_point_name_must_match_the_plugin_name() -> None:
    ep = EntryPoint(name="polls", value="switchboard_poll:PollPlugin", group=ENTRY_POINT_GROUP)
    with pytest.raises(PluginError, match="entry point 'polls' loads class PollPlugin named 'poll'"):
        load_plugin_class("polls", {"polls": ep})


def test_check_config_reports_a_bad_plugin(tmp_path: Path) -> None:
    cfg = tmp_path / "websocket.yaml"
    cfg.write_text(yaml.safe_dump(enabled("chat", f"{T}:SyncHandler")))
    done = subprocess.run([sys.executable, "-m", "server", "check-config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "plugin 'sync', type 'sync.go': handler must be 'async def'" in done.stdout + done.stderr


def test_serve_exits_naming_the_plugin_whose_on_startup_failed(tmp_path: Path) -> None:
    cfg = tmp_path / "websocket.yaml"
    cfg.write_text(yaml.safe_dump({"auth": {"secret": SECRET}, "logging": {"format": "json"},
                                   **enabled("chat", f"{T}:StartupFails")}))
    done = subprocess.run([sys.executable, "-m", "server", "serve", "-c", str(cfg), "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert ("switchboard: cannot start: plugin 'startupfails', hook 'on_startup' failed: "
            "RuntimeError: database unreachable") in done.stderr


async def test_failed_startup_shuts_down_the_plugins_already_started() -> None:
    app = create_app(make_config(enabled("chat", f"{T}:Echo", f"{T}:StartupFails")))
    runner = web.AppRunner(app)
    with pytest.raises(PluginError, match="plugin 'startupfails', hook 'on_startup' failed"):
        await runner.setup()
    echo = app[REGISTRY].plugins[1]
    assert isinstance(echo, Echo) and echo.shut_down
    await runner.cleanup()


# --- at run time: a failing plugin never takes a connection down ----------------------------
async def test_raising_handler_gives_internal_error_and_the_connection_stays(make_server: MakeServer) -> None:
    connect = connector(await make_server(enabled("chat", f"{T}:Echo")))
    ws = await connect("u1")
    with capture_logs() as logs:
        err = await ws.request("echo.boom")
    assert err["type"] == "error" and err["data"]["code"] == "INTERNAL_ERROR"
    assert any(e["event"] == "handler_failed" and e["type"] == "echo.boom" for e in logs)
    assert (await ws.request("ping"))["type"] == "pong"
    assert (await ws.request("echo", data={"text": "still here"}))["data"]["text"] == "still here"


async def test_raising_connection_hooks_do_not_drop_the_connection(make_server: MakeServer) -> None:
    client = await make_server(enabled("chat", f"{T}:ConnectFails", f"{T}:Echo"))
    ws = await connector(client)("u1")
    hello = await ws.recv_type("hello")  # the next plugin's on_connect still ran
    assert hello["data"] == {"plugin": "echo"}
    assert (await ws.request("ping"))["type"] == "pong"
    echo = client.app[REGISTRY].plugins[2]
    assert isinstance(echo, Echo)
    await ws.close()
    # ConnectFails.on_disconnect raised before it; Echo's still runs
    await asyncio.wait_for(echo.disconnected.wait(), 5)


async def test_plugin_stage_rejects_drops_and_passes_frames(make_server: MakeServer) -> None:
    connect = connector(await make_server(enabled("chat", f"{T}:Echo")))
    ws = await connect("u1")
    refused = await ws.request("echo", data={"text": "x", "reject": True})
    assert refused["type"] == "error" and refused["data"] == {"code": "FORBIDDEN",
                                                              "message": "refused by the echo stage"}
    await ws.send("echo", id="dropped", data={"text": "x", "drop": True})
    await ws.send("ping", id="after")
    frame = await ws.recv_type("pong")  # frames are handled in order: nothing answered "dropped"
    assert frame["reply_to"] == "after"
    passed = await ws.request("echo", data={"text": "x"})
    assert passed["type"] == "echo" and passed["data"]["count"] == 1  # the dropped one never ran


async def test_context_gives_per_connection_state_and_a_bound_logger(make_server: MakeServer) -> None:
    connect = connector(await make_server(enabled("chat", f"{T}:Echo")))
    with capture_logs() as logs:
        first, second = await connect("u1"), await connect("u2")
        counts = [(await first.request("echo", data={"text": "a"}))["data"]["count"] for _ in range(2)]
        other = (await second.request("echo", data={"text": "b"}))["data"]["count"]
    assert counts == [1, 2] and other == 1
    echoed = [e for e in logs if e["event"] == "echoed"]
    assert len(echoed) == 3
    assert {(e["plugin"], e["type"], e["user_id"]) for e in echoed} == {("echo", "echo", "u1"), ("echo", "echo", "u2")}
    assert all(e["conn_id"] for e in echoed)


# --- GET /api/protocol ----------------------------------------------------------------------
async def test_protocol_lists_core_chat_and_poll_types_with_schemas(make_server: MakeServer) -> None:
    client = await make_server(enabled("chat", "poll"))
    resp = await client.get("/api/protocol")
    assert resp.status == 200
    entries = (await resp.json())["types"]
    assert all(set(e) == {"type", "plugin", "direction", "description", "schema"} for e in entries)
    by_key = {(e["type"], e["direction"]): e for e in entries}
    assert len(by_key) == len(entries)
    owners = {key: e["plugin"] for key, e in by_key.items()}
    c2s, s2c = "client_to_server", "server_to_client"
    for type_ in ("ping", "auth", "refresh"):
        assert owners[(type_, c2s)] == "core"
    for type_ in ("connected", "pong", "error", "ack", "refreshed"):
        assert owners[(type_, s2c)] == "core"
    for type_ in ("join", "leave", "message"):
        assert owners[(type_, c2s)] == "chat"
    assert owners[("poll.create", c2s)] == owners[("poll.vote", c2s)] == owners[("poll.results", s2c)] == "poll"
    assert by_key[("auth", c2s)]["schema"]["required"] == ["token"]
    assert by_key[("error", s2c)]["schema"]["required"] == ["code", "message"]
    assert by_key[("message", c2s)]["schema"]["required"] == ["content"]
    vote = by_key[("poll.vote", c2s)]
    assert vote["schema"]["required"] == ["poll_id", "option"] and vote["description"]
    assert by_key[("poll.vote", c2s)]["schema"]["properties"]["option"]["minimum"] == 0
    assert "total_votes" in by_key[("poll.results", s2c)]["schema"]["properties"]
