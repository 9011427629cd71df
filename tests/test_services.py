"""The test services of tests/services.py, for real: a Redis on a free port (never the
machine's 6379), stopped and restarted on the same port, a 3-master Redis Cluster that a
cluster-aware client writes to and reads from, and nginx proxying HTTP and WebSocket
traffic to aiohttp upstreams."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis
import redis.cluster
from aiohttp import web

from tests.services import (NginxServer, RedisCluster, RedisServer, ServiceError, free_port,
                            redis_command)

pytest_plugins = ["tests.services"]


def _gone(pid: int) -> bool:
    """Whether no process is left in the process group led by ``pid``."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_free_port_is_bindable_loopback_port() -> None:
    port = free_port()
    assert 1024 < port < 65536 and port != 6379
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_server_answers_ping_on_its_own_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.cli("PING") == "PONG"
    assert redis_command(redis_server.port, "PING") == "PONG"
    assert redis_server.cli("CONFIG", "GET", "port").splitlines() == ["port",
                                                                    str(redis_server.port)]
    assert redis_server.cli("CONFIG", "GET", "save").split("\n") == ["save", ""]
    assert redis_server.cli("CONFIG", "GET", "appendonly").splitlines() == ["appendonly", "no"]
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping() is True


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_url_is_flushed_for_every_test(redis_url: str, redis_server: RedisServer,
                                              round_: int) -> None:
    assert redis_url == redis_server.url
    assert redis_server.command("DBSIZE") == "0"
    redis_server.command("SET", f"left-over-{round_}", "x")


def test_fresh_redis_stops_and_restarts_on_the_same_port(fresh_redis: RedisServer) -> None:
    port, pid = fresh_redis.port, fresh_redis.pid
    assert pid is not None
    fresh_redis.command("SET", "k", "v")

    fresh_redis.stop()
    assert not fresh_redis.running and _gone(pid)
    assert not fresh_redis.ping()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    fresh_redis.start()
    assert fresh_redis.port == port and fresh_redis.pid not in (None, pid)
    assert fresh_redis.cli("PING") == "PONG"
    assert fresh_redis.command("EXISTS", "k") == "0"  # nothing is persisted

    crashed = fresh_redis.pid
    assert crashed is not None
    fresh_redis.kill()
    assert _gone(crashed) and not fresh_redis.ping()
    fresh_redis.start()
    assert fresh_redis.port == port and fresh_redis.ping()


def test_context_manager_leaves_no_process_and_errors_carry_the_log() -> None:
    with RedisServer("--maxmemory", "10mb") as server:
        pid = server.pid
        assert pid is not None
        assert server.cli("CONFIG", "GET", "maxmemory").splitlines()[1] == str(10 * 1024 * 1024)
        with pytest.raises(ServiceError, match="unknown command"):
            server.command("NO-SUCH-COMMAND")
    assert _gone(pid) and not server.dir.exists()

    with pytest.raises(ServiceError, match="exited"):
        RedisServer("--no-such-option", "1").start()


def test_cluster_is_ok_with_three_masters_and_serves_a_cluster_client(
        redis_cluster: RedisCluster, cluster_url: str) -> None:
    assert cluster_url == redis_cluster.url == redis_cluster.urls[0]
    assert len(set(redis_cluster.ports)) == 3 and 6379 not in redis_cluster.ports
    for i in range(3):
        info = redis_cluster.info(i)
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3" and info["cluster_size"] == "3"
        assert info["cluster_slots_assigned"] == "16384"
    nodes = redis_cluster.nodes[1].cli("CLUSTER", "NODES").splitlines()
    assert len(nodes) == 3 and all("master" in line.split()[2] for line in nodes)

    client = redis.cluster.RedisCluster.from_url(cluster_url)
    try:
        keys = [f"key-{i}" for i in range(30)]
        for key in keys:
            client.set(key, key.upper())
        assert [client.get(key) for key in keys] == [key.upper().encode() for key in keys]
    finally:
        client.close()
    # the keys spread over all three masters, and cluster_url flushes each of them
    sizes = [int(node.command("DBSIZE")) for node in redis_cluster.nodes]
    assert sum(sizes) == 30 and all(sizes)
    redis_cluster.flushall()
    assert [node.command("DBSIZE") for node in redis_cluster.nodes] == ["0", "0", "0"]


@pytest.fixture
async def upstreams() -> AsyncIterator[list[str]]:
    """Two aiohttp upstreams that answer with their own name (HTTP) or echo (WebSocket)."""
    runners = []
    addresses = []
    for name in ("a", "b"):
        async def hello(request: web.Request, name: str = name) -> web.Response:
            return web.Response(text=f"{name} {request.headers.get('X-Forwarded-For')}")

        async def echo(request: web.Request, name: str = name) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(f"{name}:{msg.data}")
            return ws

        app = web.Application()
        app.router.add_get("/", hello)
        app.router.add_get("/ws", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        addresses.append(f"{host}:{port}")
    try:
        yield addresses
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_nginx_proxies_http_and_websocket_to_the_upstreams(upstreams: list[str]) -> None:
    nginx = NginxServer(upstreams)
    try:
        nginx.start()
        assert nginx.url == f"http://127.0.0.1:{nginx.port}" and nginx.port != 80
        assert "server " + upstreams[0] + ";" in nginx.config_path.read_text()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            seen = set()
            for _ in range(4):
                async with session.get(nginx.url + "/") as resp:
                    assert resp.status == 200
                    name, forwarded = (await resp.text()).split()
                    assert forwarded == "127.0.0.1"
                    seen.add(name)
            assert seen == {"a", "b"}  # round robin over both upstreams
            async with session.ws_connect(nginx.ws_url + "/ws") as ws:
                await ws.send_str("hi")
                reply = await ws.receive_str(timeout=5)
                assert reply in ("a:hi", "b:hi")
        master = nginx.pid
    finally:
        nginx.close()
    assert master and _gone(master)  # the workers went with the master
    assert not nginx.dir.exists()


def test_nginx_rejects_a_template_without_a_port_and_reports_a_bad_config() -> None:
    with pytest.raises(ValueError, match="listen_port"):
        NginxServer(["127.0.0.1:1"], "events {}")
    with pytest.raises(ServiceError, match="nginx"):
        with NginxServer(["127.0.0.1:1"], "events {} http { server { listen {listen_port}; "
                                          "no_such_directive on; } }"):
            pass


def test_no_service_process_outlives_its_object() -> None:
    server = RedisServer().start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a hung server: stop() must still end it, bounded
    try:
        server.stop(timeout=0.5)
    finally:
        server.close()
    assert _gone(pid)
