"""Slow consumers (docs/security.md, "Slow consumers"), issue 11 point 7: "One socket that never
reads and 100 healthy ones in a room, 1 KiB messages at 50/s for 30 s: the healthy ones lose 0
with p99 under 250 ms; the slow one closes 4008; server RSS stays under baseline + its queue
cap + 20 MiB."

Against the real ``switchboard serve`` in a subprocess (tests/proc.py). The slow consumer is a
raw socket (tests/resilience/test_limits.py's ``Raw``) with a small SO_RCVBUF set before it
connects, so that the kernel does not absorb the stream for it: it joins the room, then stops
reading (its transport is paused). Once the server has logged that it closes it, the test reads
what is left on the socket: the room messages the server had managed to write, in order, then
the close frame with 4008. The server's log (``connection_closing``, code 4008, the queue's
reason) and its metric ``switchboard_slow_consumer_closes`` say the same.

The slow one's queue cap (``server.write_buffer_size``) is set to 256 KiB, so that the queue,
not ``server.write_timeout``, is what closes it, and within the run: the test asserts the queue's
reason. Beyond its queue the server may hold only what its kernel and transport buffers take
(under OUTSIDE_QUEUE; server/connection.py).

Every healthy receiver counts every message (none lost, none twice, in order) and the delay of
each delivery (the sender writes its send time into the message); the p99 over all deliveries
is the bar. The server's RSS (/proc/<pid>/status) is sampled through the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from tests.conftest import make_token
from tests.proc import ServerProcess
from tests.resilience.test_limits import (MiB, OP_CLOSE, OP_TEXT, Raw, assert_no_crash,
                                          client_frame, rss, serve)

HEALTHY = 100
RATE = 50                 # messages per second
DURATION = 30.0           # seconds
MESSAGES = int(RATE * DURATION)
CONTENT = 1024            # bytes of data.content: a 1 KiB message
P99_BOUND = 0.250         # seconds, the bar
RSS_MARGIN = 20 * MiB     # the bar, over baseline + the queue cap
QUEUE_CAP = 256 * 1024    # server.write_buffer_size for this test: the slow one's queue
# what the server may hold for the slow one beyond its queue, all of which reaches it once it
# reads: 64 KiB unsent in its kernel (server/connection.py KERNEL_UNSENT), 64 KiB in its transport
# (asyncio's high-water mark), a frame over each, and the bytes in flight (its small window)
OUTSIDE_QUEUE = 192 * 1024
WAIT = 10.0               # bound on any single wait
ROOM = "firehose"

CONFIG = f"""
server:
  write_buffer_size: {QUEUE_CAP}
plugins:
  enabled: [chat]
rate_limit:
  enabled: false
security:
  max_connections_per_ip: 0
  connect_rate_per_ip: 0
logging:
  format: json
"""


async def slow_socket(srv: ServerProcess) -> tuple[Raw, str]:
    """A raw WebSocket client with a small receive buffer, joined to ROOM; its connection id."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port)),
                           WAIT)
    reader, writer = await asyncio.open_connection(sock=sock, limit=4 * MiB)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?token={make_token('slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode()
    assert head.startswith("HTTP/1.1 101"), head
    raw = Raw(reader, writer, False)
    op, payload = await raw.frame()
    assert op == OP_TEXT, (op, payload)
    connected = json.loads(payload)
    assert connected["type"] == "connected", connected
    await raw.send(client_frame(OP_TEXT, json.dumps(
        {"type": "join", "id": "j", "room": ROOM}).encode()))
    while True:
        op, payload = await raw.frame()
        assert op == OP_TEXT, (op, payload)
        if json.loads(payload).get("reply_to") == "j":
            break
    return raw, connected["data"]["connection_id"]


async def healthy(http: aiohttp.ClientSession, srv: ServerProcess,
                  sub: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(srv.url + "/ws", params={"token": make_token(sub)})
    assert json.loads((await ws.receive(WAIT)).data)["type"] == "connected"
    await ws.send_str(json.dumps({"type": "join", "id": "j", "room": ROOM}))
    while json.loads((await ws.receive(WAIT)).data).get("reply_to") != "j":
        pass
    return ws


async def receive_all(ws: aiohttp.ClientWebSocketResponse, delays: list[float]) -> list[int]:
    """The sequence numbers of the room messages this receiver got, until the sender's
    ``end`` message; each delivery's delay appended to ``delays``."""
    seqs: list[int] = []
    while True:
        msg = await ws.receive(WAIT)
        now = time.monotonic()
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
        frame = json.loads(msg.data)
        if frame["type"] != "message":
            continue  # user_joined and the like
        data = frame["data"]
        if data.get("end"):
            return seqs
        delays.append(now - data["sent_at"])
        seqs.append(data["seq"])


async def send_all(ws: aiohttp.ClientWebSocketResponse) -> None:
    """MESSAGES room messages of CONTENT bytes, paced at RATE a second, then ``end``; every
    one acked."""
    acks = 0

    async def read_acks() -> None:
        nonlocal acks
        while acks < MESSAGES + 1:
            msg = await ws.receive(WAIT)
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
            frame = json.loads(msg.data)
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                acks += 1

    reader = asyncio.get_running_loop().create_task(read_acks())
    pad = "x" * CONTENT
    started = time.monotonic()
    for seq in range(MESSAGES):
        delay = started + seq / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the traffic's pacing
        await ws.send_str(json.dumps({"type": "message", "id": f"m{seq}", "room": ROOM, "data": {
            "content": pad, "seq": seq, "sent_at": time.monotonic()}}))
    await ws.send_str(json.dumps({"type": "message", "id": "end", "room": ROOM,
                                  "data": {"content": "end", "end": True}}))
    await asyncio.wait_for(reader, WAIT)
    assert acks == MESSAGES + 1


def closing_event(srv: ServerProcess, conn_id: str) -> dict[str, Any] | None:
    for event in srv.events():
        if event.get("event") == "connection_closing" and event.get("conn_id") == conn_id:
            return event
    return None


async def slow_consumer_closes(http: aiohttp.ClientSession, srv: ServerProcess) -> float:
    """The metric of slow-consumer closes, once it is 1."""
    async with asyncio.timeout(WAIT):
        while True:
            async with http.get(srv.url + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            line = next(line for line in text.splitlines()
                        if line.startswith("switchboard_slow_consumer_closes"))
            value = float(line.split()[-1])
            if value >= 1:
                return value
            await asyncio.sleep(0.1)


@pytest.mark.timeout(120)  # 30 s of traffic, plus setup and the bounded waits
async def test_a_slow_consumer_is_closed_4008_and_the_healthy_ones_lose_nothing(
        tmp_path: Path) -> None:
    no_pool_cap = aiohttp.TCPConnector(limit=0)
    async with serve(tmp_path, CONFIG) as srv, aiohttp.ClientSession(connector=no_pool_cap) as http:
        receivers = await asyncio.gather(*(healthy(http, srv, f"h{i}") for i in range(HEALTHY)))
        sender = await healthy(http, srv, "sender")
        raw, slow_id = await slow_socket(srv)
        transport = cast(asyncio.Transport, raw.writer.transport)
        transport.pause_reading()  # from here on the slow one reads nothing
        baseline = rss(srv)
        peak = baseline

        delays: list[float] = []
        receiving = [asyncio.get_running_loop().create_task(receive_all(ws, delays))
                     for ws in receivers]
        sending = asyncio.get_running_loop().create_task(send_all(sender))

        # the server closes the slow one; then, and only then, it reads what is left
        started = time.monotonic()
        try:
            async with asyncio.timeout(DURATION):
                while (event := closing_event(srv, slow_id)) is None:
                    peak = max(peak, rss(srv))
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"the slow one still open after {DURATION:.0f} s") from None
        closed_at = time.monotonic() - started
        assert (event["code"], event["reason"]) == (4008,
                                                    "slow consumer: outbound queue overflowed")
        transport.resume_reading()
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(WAIT):
            while True:
                op, payload = await raw.frame()
                frames.append((op, payload))
                if op == OP_CLOSE:
                    break
        raw.writer.write(client_frame(OP_CLOSE, struct.pack("!H", 4008)))
        raw.abort()
        op, payload = frames[-1]
        assert len(payload) >= 2 and struct.unpack("!H", payload[:2])[0] == 4008, frames[-1]
        held = sum(len(p) for o, p in frames)
        assert held < OUTSIDE_QUEUE, f"{held} bytes reached the slow one"
        got = [json.loads(p)["data"]["seq"] for o, p in frames[:-1]
               if o == OP_TEXT and json.loads(p)["type"] == "message"]
        assert got and got == list(range(len(got))), "the slow one's messages: the first, in order"

        while not sending.done():
            peak = max(peak, rss(srv))
            await asyncio.wait([sending], timeout=0.5)
        await sending
        results = await asyncio.wait_for(asyncio.gather(*receiving), WAIT)
        peak = max(peak, rss(srv))

        # the healthy ones: every message, once, in order; the delays
        for seqs in results:
            assert seqs == list(range(MESSAGES))
        assert len(delays) == HEALTHY * MESSAGES
        delays.sort()
        p99 = delays[math.ceil(0.99 * len(delays)) - 1]
        assert await slow_consumer_closes(http, srv) == 1
        p50 = delays[len(delays) // 2]
        print(f"slow consumer: closed 4008 after {closed_at:.1f} s, {len(got)} messages "
              f"({held / 1024:.0f} KiB) reached it; healthy: {len(delays)} deliveries, "
              f"p50 {p50 * 1000:.1f} ms, p99 "
              f"{p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms; RSS baseline "
              f"{baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
              f"(+{(peak - baseline) / MiB:.1f})")
        assert p99 < P99_BOUND, f"p99 {p99 * 1000:.0f} ms"
        assert peak < baseline + QUEUE_CAP + RSS_MARGIN, \
            f"RSS peak {peak / MiB:.1f} MiB over baseline {baseline / MiB:.1f} MiB"
        for ws in (*receivers, sender):
            await ws.close()
        assert_no_crash(srv)
