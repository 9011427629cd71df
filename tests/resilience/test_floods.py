"""Floods (issue 11, point 6), against the real ``switchboard serve`` in a subprocess:

- per-IP cap N: 5,000 handshakes from one address upgrade exactly N and refuse the rest with
  429 ``TOO_MANY_CONNECTIONS`` before the upgrade (never a 101), while ``/healthz`` answers
  every probe in under 500 ms; the count returns to 0 once the N close;
- a client sending at twice its rate limit gets at most limit + burst frames through (and
  not much fewer); the rest get ``RATE_LIMITED`` and, past ``rate_limit.max_violations``,
  the close 4013;
- slowloris: 500 handshakes trickling one header byte per 10 s are closed within
  ``server.handshake_timeout`` while a fresh client still upgrades in under 1 s; a slow but
  complete handshake, an idle keep-alive connection and open WebSockets are not cut; every
  worker of ``--workers`` closes them too.

Every wait is bounded; the sockets are raw (``asyncio.open_connection``) so that the client
side costs little and sees exactly what the server answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_token
from tests.proc import ServerProcess
from tests.resilience.test_limits import OP_TEXT, Raw, assert_no_crash, serve
from tests.test_workers import start_workers

pytest_plugins = ["tests.services"]

WAIT = 10.0  # bound on any single wait (seconds)


# --- helpers -----------------------------------------------------------------------------------

def upgrade_request(token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """Status, head and body of one HTTP response (the body by Content-Length; none for 101)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 101:
        return status, head, b""
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, head
    return status, head, await reader.readexactly(int(length.group(1)))


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A GET on a new connection, closed after the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        status, _, body = await read_response(reader)
        return status, body
    finally:
        writer.close()


async def closed_after(reader: asyncio.StreamReader, what: str) -> float:
    """Seconds until the server closes this connection without a word (bounded by WAIT)."""
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), WAIT) == b"", f"{what} got an answer"
    except TimeoutError:
        raise AssertionError(f"{what} was never closed") from None
    return time.monotonic() - started


async def upgrade_when_free(srv: ServerProcess, token: str) -> Raw:
    """An upgrade, retried while refused 429 (a closed connection's place in the per-IP cap is
    freed when its handler returns, which may be just after the metrics stopped counting it)."""
    deadline = time.monotonic() + WAIT
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(upgrade_request(token))
        status, head, _ = await asyncio.wait_for(read_response(reader), WAIT)
        if status == 101:
            raw = Raw(reader, writer, False)
            op, payload = await raw.frame()
            assert op == OP_TEXT and json.loads(payload)["type"] == "connected"
            return raw
        writer.close()
        assert status == 429 and time.monotonic() < deadline, head
        await asyncio.sleep(0.02)


async def open_connections(srv: ServerProcess) -> float:
    """``switchboard_connections`` from ``/metrics``."""
    status, body = await asyncio.wait_for(http_get(srv.port, "/metrics"), WAIT)
    assert status == 200
    found = re.search(rb"(?m)^switchboard_connections (\S+)$", body)
    assert found, body[:500]
    return float(found.group(1))


async def until_connections(srv: ServerProcess, expected: int) -> None:
    deadline = time.monotonic() + WAIT
    while (now := await open_connections(srv)) != expected:
        assert time.monotonic() < deadline, f"{now} connections, expected {expected}"
        await asyncio.sleep(0.05)


def events(srv: ServerProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in srv.events()
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]


async def logged(srv: ServerProcess, count: int, name: str, **fields: Any) -> list[dict[str, Any]]:
    """The log lines of event ``name``, once ``count`` of them arrived (stderr is read by a
    task of its own, so a line may come after what the client saw); exactly ``count``."""
    deadline = time.monotonic() + WAIT
    while len(found := events(srv, name, **fields)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(found) == count, f"{len(found)} {name} log lines, expected {count}"
    return found


# --- 1. handshake flood from one address against the per-IP cap ---------------------------------

CAP = 50
FLOOD = 5000
IN_FLIGHT = 100          # handshakes in flight at once (the listen backlog is 128)
HEALTHZ_BOUND = 0.5      # seconds: the bar for every /healthz probe
FLOOD_CONFIG = (f"security:\n  max_connections_per_ip: {CAP}\n"
                "  connect_rate_per_ip: 0\n"        # off: the per-IP cap is what refuses
                "  max_connections_per_user: 0\n")  # off: one token for every attempt


async def test_5000_handshakes_from_one_address_upgrade_exactly_the_cap(tmp_path: Path) -> None:
    async with serve(tmp_path, FLOOD_CONFIG) as srv:
        token = make_token("flooder")
        gate = asyncio.Semaphore(IN_FLIGHT)
        held: list[Raw] = []
        statuses: dict[int, int] = {}
        codes: dict[str, int] = {}

        async def attempt() -> None:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", srv.port), WAIT)
                writer.write(upgrade_request(token))
                status, _, body = await asyncio.wait_for(read_response(reader), WAIT)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 101:  # admitted: held open until the flood is over
                    raw = Raw(reader, writer, False)
                    op, payload = await raw.frame()
                    assert op == OP_TEXT and json.loads(payload)["type"] == "connected"
                    held.append(raw)
                    return
                writer.close()
                code = json.loads(body)["error"]["code"]
                codes[code] = codes.get(code, 0) + 1

        probes: list[float] = []
        flooding = True

        async def probe() -> None:
            while flooding:
                started = time.perf_counter()
                status, body = await asyncio.wait_for(http_get(srv.port, "/healthz"), WAIT)
                probes.append(time.perf_counter() - started)
                assert status == 200 and json.loads(body)["status"] == "ok"
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        started = time.monotonic()
        try:
            await asyncio.gather(*(attempt() for _ in range(FLOOD)))
        finally:
            flooding = False
            await asyncio.wait_for(prober, WAIT)
        took = time.monotonic() - started

        assert statuses == {101: CAP, 429: FLOOD - CAP}, statuses
        assert codes == {"TOO_MANY_CONNECTIONS": FLOOD - CAP}, codes
        await logged(srv, FLOOD - CAP, "upgrade_refused", reason="per_ip_cap")
        assert len(probes) >= 10, f"only {len(probes)} /healthz probes during the flood"
        worst = max(probes)
        print(f"flood: {FLOOD} handshakes in {took:.2f} s ({FLOOD / took:.0f}/s), "
              f"{len(probes)} /healthz probes, worst {worst * 1000:.0f} ms, "
              f"median {sorted(probes)[len(probes) // 2] * 1000:.1f} ms")
        assert worst < HEALTHZ_BOUND, f"/healthz took {worst * 1000:.0f} ms during the flood"
        await until_connections(srv, CAP)

        # the N close: the count goes back to 0, and the address may hold N again, not N + 1
        for raw in held:
            raw.abort()
        await until_connections(srv, 0)
        again = [await upgrade_when_free(srv, token) for _ in range(CAP)]
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(upgrade_request(token))
        status, _, body = await asyncio.wait_for(read_response(reader), WAIT)
        writer.close()
        assert (status, json.loads(body)["error"]["code"]) == (429, "TOO_MANY_CONNECTIONS")
        for raw in again:
            raw.abort()
        await until_connections(srv, 0)
        assert_no_crash(srv)


# --- 2. a client at twice its rate limit --------------------------------------------------------

RATE = 600               # frames a minute: 10 a second
BURST = 10
VIOLATIONS = 40          # rate_limit.max_violations: the 41st refusal closes 4013
SECONDS = 3.0            # the paced phase
SEND_RATE = 2 * RATE / 60  # frames a second: twice the limit
RATE_CONFIG = (f"rate_limit:\n  messages_per_minute: {RATE}\n  burst: {BURST}\n"
               "  user_messages_per_minute: 60000\n  user_burst: 1000\n"  # not the bound here
               f"  max_violations: {VIOLATIONS}\n  violation_window: 30.0\n")


async def test_a_client_at_twice_its_rate_gets_at_most_limit_plus_burst(tmp_path: Path) -> None:
    async with serve(tmp_path, RATE_CONFIG) as srv, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(srv.url + "/ws", params={"token": make_token("fast")})
        assert json.loads((await ws.receive(WAIT)).data)["type"] == "connected"
        replies: dict[str, tuple[float, dict[str, Any]]] = {}  # frame id -> (received, reply)

        async def read() -> None:
            async for msg in ws:
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                reply = json.loads(msg.data)
                if reply.get("reply_to"):
                    replies[reply["reply_to"]] = (time.monotonic(), reply)

        reader = asyncio.create_task(read())
        n = int(SECONDS * SEND_RATE)
        first_sent = time.monotonic()
        for i in range(n):  # paced on an absolute schedule: a late send catches up
            await asyncio.sleep(max(0.0, first_sent + i / SEND_RATE - time.monotonic()))
            await ws.send_str(json.dumps({"type": "ping", "id": f"p{i}"}))
        last_sent = time.monotonic()
        deadline = time.monotonic() + WAIT
        while len(replies) < n:
            assert time.monotonic() < deadline, f"{len(replies)} of {n} frames answered"
            await asyncio.sleep(0.01)

        paced = [replies[f"p{i}"][1] for i in range(n)]
        accepted = sum(r["type"] == "pong" for r in paced)
        refused = [r for r in paced if r["type"] == "error"]
        assert all(r["data"]["code"] == "RATE_LIMITED" for r in refused), refused[:3]
        assert accepted + len(refused) == n
        for r in refused:  # a refused client is told when a token is back: within 1/rate
            assert 0 < r["data"]["retry_after"] <= 60 / RATE + 0.001, r
        # The server handled the first frame after it was sent and the last before its reply
        # came back, so it counted at most this long, and at least the shorter span
        received = [t for t, _ in replies.values()]
        longest = max(received) - first_sent
        shortest = last_sent - min(received)
        most = BURST + math.floor(RATE / 60 * longest)
        least = BURST + math.floor(RATE / 60 * shortest) - 1
        print(f"rate: {n} frames in {last_sent - first_sent:.2f} s at {SEND_RATE:g}/s against "
              f"{RATE / 60:g}/s + burst {BURST}: {accepted} through (bounds {least}..{most}), "
              f"{len(refused)} RATE_LIMITED")
        assert accepted <= most, f"{accepted} frames through, at most {most} allowed"
        assert accepted >= least, f"only {accepted} frames through, {least} were allowed"
        assert len(refused) < VIOLATIONS  # the paced phase alone does not close

        # keep going past max_violations refusals: the one after the last allowed closes 4013
        for i in range(2 * VIOLATIONS):
            try:
                await ws.send_str(json.dumps({"type": "ping", "id": f"b{i}"}))
            except ConnectionError:  # closed already
                break
        await asyncio.wait_for(reader, WAIT)
        assert ws.close_code == 4013
        errors = [r for _, r in replies.values() if r["type"] == "error"]
        assert len(errors) == VIOLATIONS
        assert {r["data"]["code"] for r in errors} == {"RATE_LIMITED"}
        await logged(srv, 1, "rate_limit_close")
        assert_no_crash(srv)


# --- 3. slowloris -------------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 2.0
MARGIN = 0.5             # seconds past the timeout a closed slowloris may still be open
EARLY = 0.01             # timer and clock granularity
SLOW = 500               # handshakes sending one header byte per 10 s
FAST_TRICKLE = 20        # one byte per 0.25 s: bytes do not extend the deadline
SILENT = 20              # connect and send nothing
UPGRADE_BOUND = 1.0      # seconds: the bar for a fresh client during the attack
SLOWLORIS_CONFIG = f"server:\n  handshake_timeout: {HANDSHAKE_TIMEOUT}\n"
LORIS_HEAD = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Pad: " + b"a" * 4000


class Loris:
    """A raw socket that sends its request head one byte every ``every`` seconds (or nothing),
    until the server closes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 every: float | None, opened: float) -> None:
        self.reader, self.writer, self.every = reader, writer, every
        self.opened = opened  # before connecting: the server cannot have accepted it earlier
        self.closed = math.inf

    @classmethod
    async def open(cls, port: int, every: float | None) -> "Loris":
        opened = time.monotonic()
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        return cls(reader, writer, every, opened)

    async def run(self, limit: float) -> None:
        sent = 0
        end = self.opened + limit
        try:
            while time.monotonic() < end:
                if self.every is not None:
                    self.writer.write(LORIS_HEAD[sent:sent + 1])
                    sent += 1
                wait = min(self.every or limit, end - time.monotonic())
                try:
                    data = await asyncio.wait_for(self.reader.read(1024), max(wait, 0.001))
                except TimeoutError:
                    continue
                assert data == b"", f"the server answered a slowloris: {data!r}"
                self.closed = time.monotonic()
                return
        except ConnectionError:
            self.closed = time.monotonic()
        finally:
            self.writer.transport.abort()


@pytest.mark.parametrize("answer", [401, 400])
async def test_after_a_refused_upgrade_the_next_request_on_the_connection_is_timed(
        tmp_path: Path, answer: int) -> None:
    """The WebSocket endpoint tells the header clock itself when it is done (no middleware
    waits on it): an upgrade refused with 401 (a bad token) or 400 (not a WebSocket
    handshake) leaves a keep-alive connection whose next request must again complete its
    head within server.handshake_timeout."""
    async with serve(tmp_path, SLOWLORIS_CONFIG) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        if answer == 401:
            writer.write(upgrade_request("not-a-token"))
        else:
            writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, head, body = await asyncio.wait_for(read_response(reader), WAIT)
        assert status == answer, head
        assert json.loads(body)["error"]["code"], body  # the contract's JSON body
        writer.write(b"GET /hea")  # the next request's head, never finished
        took = await closed_after(reader, "the request after a refused upgrade")
        assert HANDSHAKE_TIMEOUT - EARLY <= took <= HANDSHAKE_TIMEOUT + MARGIN, took
        writer.close()


async def test_slowloris_handshakes_are_closed_in_time_and_others_still_upgrade(
        tmp_path: Path) -> None:
    async with serve(tmp_path, SLOWLORIS_CONFIG) as srv, aiohttp.ClientSession() as http:
        # an idle keep-alive connection, opened before the attack
        keep_r, keep_w = await asyncio.open_connection("127.0.0.1", srv.port)
        healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        keep_w.write(healthz)
        assert (await asyncio.wait_for(read_response(keep_r), WAIT))[0] == 200

        # a slow but complete handshake: its head in 6 pieces over 1.5 s
        async def slow_but_complete() -> Raw:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            request = upgrade_request(make_token("patient"))
            pieces = 6
            size = math.ceil(len(request) / pieces)
            for i in range(pieces):
                if i:
                    await asyncio.sleep(0.3)
                writer.write(request[i * size:(i + 1) * size])
            status, head, _ = await asyncio.wait_for(read_response(reader), WAIT)
            assert status == 101, head
            raw = Raw(reader, writer, False)
            op, payload = await raw.frame()
            assert op == OP_TEXT and json.loads(payload)["type"] == "connected"
            return raw

        patient_task = asyncio.create_task(slow_but_complete())

        # the attack: every socket from 127.0.0.1, more than security.max_connections_per_ip
        gate = asyncio.Semaphore(100)

        async def loris(every: float | None) -> Loris:
            async with gate:
                return await Loris.open(srv.port, every)

        attack_started = time.monotonic()
        lorises = await asyncio.gather(*([loris(10.0) for _ in range(SLOW)]
                                         + [loris(0.25) for _ in range(FAST_TRICKLE)]
                                         + [loris(None) for _ in range(SILENT)]))
        runs = [asyncio.create_task(lo.run(HANDSHAKE_TIMEOUT + WAIT)) for lo in lorises]
        all_open = time.monotonic()

        # a fresh client during the attack
        before = time.monotonic()
        fresh = await http.ws_connect(srv.url + "/ws", params={"token": make_token("fresh")})
        assert json.loads((await fresh.receive(WAIT)).data)["type"] == "connected"
        upgraded = time.monotonic()

        await asyncio.wait_for(asyncio.gather(*runs), 2 * WAIT)
        first_closed = min(lo.closed for lo in lorises)
        assert upgraded < first_closed, "the fresh client was not served during the attack"
        lived = sorted(lo.closed - lo.opened for lo in lorises)
        upgrade = upgraded - before
        print(f"slowloris: {len(lorises)} sockets open in {all_open - attack_started:.2f} s; "
              f"fresh upgrade {upgrade * 1000:.0f} ms; closed after {lived[0]:.3f}.."
              f"{lived[-1]:.3f} s (timeout {HANDSHAKE_TIMEOUT} s)")
        assert upgrade < UPGRADE_BOUND, f"fresh client upgraded in {upgrade:.3f} s"
        assert lived[-1] <= HANDSHAKE_TIMEOUT + MARGIN, lived[-5:]
        assert lived[0] >= HANDSHAKE_TIMEOUT - EARLY, lived[:5]  # by the timeout, not before

        # what is not a handshake in progress is not cut
        patient = await asyncio.wait_for(patient_task, WAIT)
        await patient.ping_pong()
        await fresh.send_str(json.dumps({"type": "ping", "id": "after"}))
        assert json.loads((await fresh.receive(WAIT)).data)["reply_to"] == "after"
        keep_w.write(healthz)  # idle for longer than the timeout: still open
        assert (await asyncio.wait_for(read_response(keep_r), WAIT))[0] == 200
        # and its next request is timed from its first byte
        keep_w.write(healthz[:5])
        took = await closed_after(keep_r, "a keep-alive request's partial head")
        assert HANDSHAKE_TIMEOUT - EARLY <= took <= HANDSHAKE_TIMEOUT + MARGIN, took
        keep_w.close()

        # none of them counted anywhere: only the two WebSockets are connections
        timed_out = await logged(srv, len(lorises) + 1, "handshake_timeout")
        assert {e["remote"] for e in timed_out} == {"127.0.0.1"}
        assert not events(srv, "upgrade_refused")
        assert await open_connections(srv) == 2
        await fresh.close()
        patient.abort()
        await until_connections(srv, 0)
        assert_no_crash(srv)


KEEPALIVE_TIMEOUT = 1.0


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
        tmp_path: Path) -> None:
    """One quick request per socket, then silence, must not hold a socket for aiohttp's default
    hour: ``server.keepalive_timeout`` closes the idle connection; a WebSocket idle as long is
    not touched."""
    config = f"server:\n  keepalive_timeout: {KEEPALIVE_TIMEOUT}\n"
    async with serve(tmp_path, config) as srv, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(srv.url + "/ws", params={"token": make_token("idle")})
        assert json.loads((await ws.receive(WAIT)).data)["type"] == "connected"
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), WAIT))[0] == 200
        idle = await closed_after(reader, "an idle keep-alive connection")
        writer.close()
        assert KEEPALIVE_TIMEOUT - EARLY <= idle <= KEEPALIVE_TIMEOUT + 2 * MARGIN, idle
        await ws.send_str(json.dumps({"type": "ping", "id": "still"}))
        assert json.loads((await ws.receive(WAIT)).data)["reply_to"] == "still"
        await ws.close()
        assert_no_crash(srv)


WORKERS_TIMEOUT = 1.0
WORKER_LORISES = 40


async def test_every_worker_closes_slowloris_handshakes(tmp_path: Path, redis_url: str) -> None:
    """``--workers 2``: each worker listens with the same header deadline (SO_REUSEPORT
    spreads the sockets over both)."""
    server = await start_workers(tmp_path, redis_url, f"  handshake_timeout: {WORKERS_TIMEOUT}\n")
    port = server.port
    try:
        lorises = await asyncio.gather(*(Loris.open(port, 10.0)
                                         for _ in range(WORKER_LORISES)))
        runs = [asyncio.create_task(lo.run(WORKERS_TIMEOUT + WAIT)) for lo in lorises]
        async with aiohttp.ClientSession() as http:
            before = time.monotonic()
            fresh = await http.ws_connect(f"{server.url}/ws",
                                          params={"token": make_token("fresh")})
            assert json.loads((await fresh.receive(WAIT)).data)["type"] == "connected"
            upgrade = time.monotonic() - before
            await asyncio.wait_for(asyncio.gather(*runs), 2 * WAIT)
            lived = sorted(lo.closed - lo.opened for lo in lorises)
            print(f"workers: {len(lorises)} slowloris closed after {lived[0]:.3f}.."
                  f"{lived[-1]:.3f} s (timeout {WORKERS_TIMEOUT} s); fresh upgrade "
                  f"{upgrade * 1000:.0f} ms")
            assert WORKERS_TIMEOUT - EARLY <= lived[0] and lived[-1] <= WORKERS_TIMEOUT + MARGIN
            assert upgrade < UPGRADE_BOUND
            await server.wait_event("handshake_timeout", count=WORKER_LORISES)
            by_worker = {e.get("worker") for e in server.found("handshake_timeout")}
            assert len(server.found("handshake_timeout")) == WORKER_LORISES
            assert len(by_worker) == 2 and None not in by_worker, by_worker
            await fresh.send_str(json.dumps({"type": "ping", "id": "after"}))
            assert json.loads((await fresh.receive(WAIT)).data)["reply_to"] == "after"
            await fresh.close()
    finally:
        await server.close()
