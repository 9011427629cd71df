"""How much Redis memory Switchboard's state takes: per connection, per room, per member, per
history entry, per channel subscription. The figures in docs/deploy.md come from this script.

Method: a redis-server of its own (tests/services.py: no persistence, on a free loopback
port), or with ``--cluster`` a 3-master Redis Cluster; the real backend classes
(``server.backends.redis.RedisBackend``, config from ``server.config.load_config``) write the
state as a node does; each scenario starts from FLUSHALL and reads ``used_memory`` from
``INFO memory`` (every master, summed) before and after. The difference divided by the count
is the figure. The Lua scripts, the client's connections and the pub/sub connection exist
before the first reading; each reading waits SETTLE seconds; the change in the command
connections' own buffers (``tot-mem`` in ``CLIENT LIST``) is taken off each difference. Two
runs agree within 1-2%.

    .venv/bin/python benchmarks/redis_memory.py             # one Redis
    .venv/bin/python benchmarks/redis_memory.py --cluster   # a 3-master Redis Cluster
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.backends.redis import RedisBackend  # noqa: E402
from server.config import load_config  # noqa: E402
from server.protocol import encode, frame, new_id  # noqa: E402
from tests.services import RedisCluster, RedisServer, redis_command  # noqa: E402

BATCH = 50  # operations in flight at once (redis-py 8 pools hold at most 100 connections)
PREFIX = "switchboard"
#: seconds to wait before a reading: a dict that just grew is rehashed in steps (serverCron,
#: 10 times a second), holding both tables meanwhile
SETTLE = 1.0
HISTORY_SIZE, HISTORY_TTL = 100, 3600.0  # the defaults of rooms.history_size/history_ttl


async def batched(calls: Iterable[Callable[[], Awaitable[Any]]]) -> None:
    pending: list[Awaitable[Any]] = []
    for call in calls:
        pending.append(call())
        if len(pending) >= BATCH:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def settle() -> None:
    """Let Redis settle (see SETTLE) before reading used_memory."""
    await asyncio.sleep(SETTLE)


class Bench:
    def __init__(self, ports: list[int], backend: RedisBackend) -> None:
        self.ports = ports
        self.b = backend
        self.rows: list[tuple[str, int, int, str]] = []

    def info(self, section: str, field: str) -> int:
        """``field`` of ``INFO section``, summed over the masters."""
        total = 0
        for port in self.ports:
            text = redis_command(port, "INFO", section)
            total += int(next(line.split(":")[1] for line in text.splitlines()
                              if line.startswith(field + ":")))
        return total

    def used(self) -> int:
        return self.info("memory", "used_memory")

    def clients(self) -> int:
        return self.info("clients", "connected_clients")

    def command_clients_memory(self) -> int:
        """``tot-mem`` (buffers and all) of the connections that send commands: redis-py's pool,
        not the pub/sub connection nor the one asking. Redis grows and shrinks their buffers
        as they are used and idle (clientsCron), by hundreds of KB over the pool, which is no
        part of the state being measured: it is taken off each figure."""
        total = 0
        for port in self.ports:
            for line in redis_command(port, "CLIENT", "LIST").splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                if fields.get("cmd") == "client|list" or fields.get("ssub", "0") != "0" \
                        or fields.get("sub", "0") != "0":
                    continue
                total += int(fields["tot-mem"])
        return total

    def keys(self) -> int:
        return sum(int(redis_command(port, "DBSIZE")) for port in self.ports)

    def flush(self) -> None:
        for port in self.ports:
            redis_command(port, "FLUSHALL", "SYNC")

    async def measure(self, what: str, count: int, setup: Callable[[], Awaitable[Any]] | None,
                      work: Callable[[], Awaitable[Any]], note: str = "") -> int:
        self.flush()
        if setup is not None:
            await setup()
        await settle()
        clients, before, buffers = self.clients(), self.used(), self.command_clients_memory()
        started = time.monotonic()
        await work()
        elapsed = time.monotonic() - started
        await settle()
        after = self.used()
        buffers = self.command_clients_memory() - buffers
        delta = after - before - buffers
        if self.clients() != clients:  # a command connection opened meanwhile: taken off
            note = f"{note} (client connections {clients} -> {self.clients()})".strip()
        print(f"  {what}: {delta:,} bytes / {count:,} = {delta / count:,.0f} bytes "
              f"({elapsed:.1f} s, {self.keys():,} keys, the pool's buffers {buffers:+,} bytes, taken off)"
              f"{' ' + note if note else ''}",
              file=sys.stderr)
        self.rows.append((what, count, delta, note))
        return delta

    # --- the writes a node makes -----------------------------------------------------------
    def connect(self, user: str) -> Callable[[], Awaitable[Any]]:
        """A connection opens (server/lifecycle.py) and its user is announced online
        (plugins/presence.py)."""
        async def run() -> None:
            await self.b.presence.add_connection(user, new_id(), {
                "username": f"name-{user}", "connected_at": time.time(), "node": "node-1"})
            await self.b.presence.mark_online(user)
        return run

    def disconnect_all(self, users: list[str]) -> Callable[[], Awaitable[Any]]:
        async def run() -> None:
            async def one(user: str) -> None:
                for conn in await self.b.presence.connections(user):
                    await self.b.presence.remove_connection(user, conn)
                await self.b.presence.mark_offline(user)
            await batched(lambda u=u: one(u) for u in users)  # type: ignore[misc]
        return run

    def join(self, room: str, user: str) -> Callable[[], Awaitable[Any]]:
        async def run() -> None:
            await self.b.rooms.add_member(room, user, new_id())
        return run

    def message(self, room: str, content: str) -> Callable[[], Awaitable[Any]]:
        """A room message as the chat plugin keeps it (Node.post_to_room)."""
        async def run() -> None:
            message = frame("message", {"content": content}, room=room,
                            sender={"id": "user-123456", "username": "alice"})
            await self.b.broker.publish_kept(room, message, size=HISTORY_SIZE, ttl=HISTORY_TTL)
        return run


async def run(cluster: bool) -> Bench:
    service: RedisServer | RedisCluster = RedisCluster() if cluster else RedisServer()
    service.start()
    try:
        ports = service.ports if isinstance(service, RedisCluster) else [service.port]
        config = load_config(None, env={}, overrides={"backend": {"type": "redis", "redis": {
            "url": service.url, "prefix": PREFIX, "cluster": cluster}}}).config
        backend = RedisBackend("node-1", config)
        # the broker only (for the subscriptions): not backend.start(), whose heartbeat and
        # sweep tasks would write (and open a client connection) in the middle of a reading
        await backend.client.ping()
        await backend.broker.start(lambda *args: None)
        bench = Bench(ports, backend)
        try:
            await measures(bench)
        finally:
            await backend.close()
        return bench
    finally:
        service.close()


async def measures(m: Bench) -> None:
    n = 10_000
    users = [f"user-{i:06d}" for i in range(n)]
    rooms = [f"room-{i:04d}" for i in range(1_000)]
    # Warm-up, then FLUSHALL: every Lua script loaded, and the client's pools (and a cluster
    # client's connections to every master) opened at the concurrency of the measures, so
    # that what is measured is the data alone (a client connection holds buffers of its own).
    warm = [f"warm-{i}" for i in range(BATCH * 10)]
    for _ in range(2):
        await batched(m.connect(u) for u in warm)
        await m.disconnect_all(warm)()
        await batched(_create(m, u) for u in warm)
        await batched(m.join(u, u) for u in warm)
        await batched(m.message(u, "x") for u in warm)
        await batched(_sub(m, "room", u) for u in warm)
    await fresh_broker(m)
    m.flush()

    print("connections and presence", file=sys.stderr)
    await m.measure("connection, one per user (presence hash, online set)", n, None,
                    lambda: batched(m.connect(u) for u in users))
    await m.measure("connection, 10 per user (1,000 users)", n, None,
                    lambda: batched(m.connect(users[i % 1_000]) for i in range(n)))
    await m.measure("last_seen of a user gone offline", n, None,
                    lambda: _then(batched(m.connect(u) for u in users), m.disconnect_all(users)))

    print("rooms", file=sys.stderr)
    many = [f"room-{i:05d}" for i in range(n)]  # 10,000 rooms: steadier figures than 1,000
    await m.measure("room, created, no member", n, None, lambda: batched(_create(m, r) for r in many))
    await m.measure("member, each user in 1 room (1,000 rooms x 10 users)", n,
                    lambda: batched(_create(m, r) for r in rooms),
                    lambda: batched(m.join(rooms[i // 10], users[i]) for i in range(n)))
    await m.measure("member, each user in 10 rooms (1,000 rooms x 10 users)", n,
                    lambda: batched(_create(m, r) for r in rooms),
                    lambda: batched(m.join(rooms[i // 10], users[(i * 7) % 1_000]) for i in range(n)))

    print("history", file=sys.stderr)
    text64, text1k = "x" * 64, "x" * 1024
    entries = 100_000
    for text in (text64, text1k):
        size = len(encode(frame("message", {"content": text}, room=rooms[0], offset="9f2c0a1b:100",
                                sender={"id": "user-123456", "username": "alice"})))
        await m.measure(f"history entry, {len(text):,}-character message", entries, None,
                        lambda text=text: batched(m.message(rooms[i % 1_000], text)  # type: ignore[misc]
                                                  for i in range(entries)),
                        note=f"(frame {size} bytes)")
    written = 300
    await m.measure(f"room history at steady state (history_size {HISTORY_SIZE}, {written} "
                    "64-character messages written)", len(rooms), None,
                    lambda: batched(m.message(rooms[i % 1_000], text64) for i in range(written * 1_000)))
    lengths = [int(await m.b.client.xlen(m.b._keys.room(r, "h"))) for r in rooms]
    note = f"(entries kept per room: {min(lengths)}-{max(lengths)}, mean {sum(lengths) / len(lengths):.0f})"
    print(f"  {note}", file=sys.stderr)
    m.rows[-1] = (*m.rows[-1][:3], note)

    # Subscriptions are the pub/sub connection's: each measure starts on a new one (subscribed
    # to one channel, so it is open and read), since the replies to unsubscribing would wait
    # unread in Redis's output buffer and be counted.
    print("subscriptions", file=sys.stderr)
    await m.measure("user channel subscribed by a node (per user online on that node)", n,
                    lambda: fresh_broker(m), lambda: batched(_sub(m, "user", u) for u in users))
    await m.measure("room channel subscribed by a node (per room with a member there)", n,
                    lambda: fresh_broker(m), lambda: batched(_sub(m, "room", r) for r in many))


async def fresh_broker(m: Bench) -> None:
    """A new pub/sub connection, subscribed to the control channel (as a node's is)."""
    await m.b.broker.close()
    await m.b.broker.start(lambda *args: None)
    await m.b.broker.subscribe("control", "")


async def _then(first: Awaitable[Any], second: Callable[[], Awaitable[Any]]) -> None:
    await first
    await second()


def _create(m: Bench, room: str) -> Callable[[], Awaitable[Any]]:
    return lambda: m.b.rooms.create(room, persistent=False)


def _sub(m: Bench, kind: Any, key: str) -> Callable[[], Awaitable[Any]]:
    return lambda: m.b.broker.subscribe(kind, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    args = parser.parse_args()
    bench = asyncio.run(run(args.cluster))
    version = redis_version()
    print(f"Redis {version}{' Cluster (3 masters)' if args.cluster else ''}, "
          f"Python {platform.python_version()}, {platform.machine()}\n")
    print("| what | count | used_memory delta | per item |")
    print("|---|---:|---:|---:|")
    for what, count, delta, note in bench.rows:
        print(f"| {what}{' ' + note if note else ''} | {count:,} | {delta:,} B | "
              f"{delta / count:,.0f} B |")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    main()
