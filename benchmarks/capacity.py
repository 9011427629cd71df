"""What Redis costs when N Switchboard nodes share it: Redis CPU per room message published, per
pub/sub delivery to a node, per connection opened and closed; the publish rate; Redis memory
per kept history entry, per connection, per channel subscription; and what a node's own
Python side spends on each. docs/deploy.md ("Capacity to 1M connections") builds its capacity
model on these figures.

Method: a redis-server of its own (tests/services.py: no persistence, on a free loopback port)
or, with ``--cluster``, a 3-master Redis Cluster. ``--nodes`` simulated nodes in this one
process, each the real backend (``server.backends.redis.RedisBackend``, config from
``server.config.load_config``) with its own client pool and its own pub/sub connection, its
broker started with a deliver callback that counts what it gets. Each of ``--rooms`` room
channels is subscribed by ``--spread`` nodes (the nodes that hold a member of the room), so
every publication is delivered by Redis to ``--spread`` nodes, the publisher's own echo
included (the broker hands a publication to the publisher's connections at once and drops the
echo: it counts as a Redis delivery, once as a delivery to the node). The publisher of each
message is one of the room's subscribed nodes, as a sender is a member of the room.

In order:

* probes, not counted elsewhere: ``broker.subscribe`` of ``--probes`` new channels on a node
  whose reader is running, one at a time (what a node does at the first local member of a
  room); ``--latency-probes`` publications from node 0 to node 1, one at a time, at a rate low
  enough that nothing queues (what a quiet room sees);
* ``kept``: ``--messages`` room messages through ``broker.publish_kept`` (the chat path: one Lua
  script numbers the message, appends it to the room's history stream and SPUBLISHes it), as
  ``Node.post_to_room`` does, in two halves;
* ``plain``: ``--messages`` through ``broker.publish("room", ...)`` (SPUBLISH alone: typing,
  join and leave events, whatever is not kept);
* connections: ``--connections`` connections open (the presence and room calls of
  ``lifecycle._open`` and ``Node.join``, one user and one room each), then all close.

Redis CPU is ``used_cpu_sys + used_cpu_user`` of ``INFO cpu``, summed over every redis-server,
read before a step and after its last delivery has reached its node; the idle rate (the
server's cron, a cluster's bus), measured for a second before the steps, is subtracted. The
client CPU is this process's (``getrusage``), all nodes together. Memory is ``used_memory`` of
``INFO memory`` summed over the masters, read between steps; for history, after the kept
phase's first half (which creates every room's stream and counter) and after its second half:
the second delta over the entries it added is the cost of one kept entry (meaningful with tens
of entries a room or more: with a few, a stream's first allocation dominates). A warm-up (then
FLUSHALL) loads the broker's script and opens the pools first. Nothing but loopback is used.

    .venv/bin/python benchmarks/capacity.py                       # one Redis
    .venv/bin/python benchmarks/capacity.py --cluster             # a 3-master Redis Cluster
    .venv/bin/python benchmarks/capacity.py --nodes 8 --rooms 2000 --messages 40000 \\
        --spread 4 --json out.json

Exit status 0, or 2 when a delivery was lost or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from server.backends.base import Route  # noqa: E402
from server.backends.redis import RedisBackend  # noqa: E402
from server.config import load_config  # noqa: E402
from server.protocol import encode, frame  # noqa: E402
from tests.services import RedisCluster, RedisServer  # noqa: E402

PREFIX = "switchboard"
HISTORY_TTL = 3600.0  # rooms.history_ttl's default
IDLE_SECONDS = 1.0


# --- Redis, seen from the side: INFO of every master over a plain client of its own ----------
class Masters:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.clients = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True)
                        for p in ports]

    def cpu(self) -> list[float]:
        """used_cpu_sys + used_cpu_user of each server, seconds."""
        return [sys_ + user for sys_, user in self.cpu_split()]

    def cpu_split(self) -> list[tuple[float, float]]:
        """(used_cpu_sys, used_cpu_user) of each server, seconds."""
        out = []
        for c in self.clients:
            info = c.info("cpu")
            out.append((float(info["used_cpu_sys"]), float(info["used_cpu_user"])))
        return out

    def used_memory(self) -> int:
        return sum(int(c.info("memory")["used_memory"]) for c in self.clients)

    def flushall(self) -> None:
        for c in self.clients:
            c.flushall(asynchronous=False)

    def subscriptions(self, channels: list[str]) -> int:
        """Shard-channel subscriptions to ``channels``, summed over the masters (each counts
        the subscribers of the channels of its own slots)."""
        total = 0
        for c in self.clients:
            for i in range(0, len(channels), 500):
                reply = c.execute_command("PUBSUB", "SHARDNUMSUB", *channels[i:i + 500])
                total += sum(int(n) for n in reply[1::2])
        return total

    def close(self) -> None:
        for c in self.clients:
            c.close()


@dataclass
class Counter:
    deliveries: int = 0  # what the deliver callbacks got (local ones included)
    redis: int = 0  # what Redis sent to the nodes' pub/sub connections (echoes included)


#: the room of the latency probe: delivered apart, not counted in the phases
LATENCY_ROOM = "latency-probe"


def node_backend(i: int, url: str, cluster: bool, counter: Counter) -> RedisBackend:
    config = load_config(None, env={}, overrides={"backend": {"type": "redis", "redis": {
        "url": url, "prefix": PREFIX, "cluster": cluster}}}).config
    backend = RedisBackend(f"node-{i}", config)
    broker = backend.broker
    received = broker._received
    probe = backend._keys.channel("room", LATENCY_ROOM).encode()

    def counting_received(channel: bytes, data: bytes) -> None:  # every Redis delivery
        if channel != probe:
            counter.redis += 1
        received(channel, data)

    broker._received = counting_received  # type: ignore[method-assign]
    return backend


def deliver_for(counter: Counter, arrivals: dict[bytes, float]) -> Any:
    def deliver(kind: str, key: str, payload: bytes, route: Route) -> None:
        if key == LATENCY_ROOM:
            arrivals[payload] = time.monotonic()
            return
        counter.deliveries += 1
    return deliver


async def wait_for(counter: Counter, deliveries: int, redis_deliveries: int,
                   timeout: float) -> tuple[bool, float]:
    """Wait until the counts are reached (polling every 5 ms); whether they were, and when."""
    deadline = time.monotonic() + timeout
    while counter.deliveries < deliveries or counter.redis < redis_deliveries:
        if time.monotonic() > deadline:
            return False, time.monotonic()
        await asyncio.sleep(0.005)
    reached = time.monotonic()
    await asyncio.sleep(0.05)  # a duplicate would show now
    return True, reached


def progress(text: str) -> None:
    print(f"[capacity] {text}", file=sys.stderr, flush=True)


def rusage() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Sim:
    def __init__(self, args: argparse.Namespace, url: str, masters: Masters) -> None:
        self.a = args
        self.masters = masters
        self.counter = Counter()
        self.backends = [node_backend(i, url, args.cluster, self.counter)
                         for i in range(args.nodes)]
        self.rooms = [f"room-{r:06d}" for r in range(args.rooms)]
        self.sender = {"id": "user-000001", "username": "alice"}
        self.content = "x" * args.content_bytes
        self.idle_rate = [0.0] * len(masters.ports)
        self.arrivals: dict[bytes, float] = {}
        self.bytes_per_subscription = 0.0

    def subscribers(self, r: int) -> list[int]:
        return [(r + j) % self.a.nodes for j in range(self.a.spread)]

    async def start(self) -> None:
        for b in self.backends:
            # the broker and the client only: not backend.start(), whose heartbeat and sweep
            # would write to Redis in the middle of a measure
            await b.client.ping()
            await b.broker.start(deliver_for(self.counter, self.arrivals))
        # What broker.subscribe does (SSUBSCRIBE on the node's pub/sub, then the channel noted
        # in the broker's table), all of a node's channels first and the table filled after:
        # the reader idles while the table is empty, so the SSUBSCRIBEs do not queue behind its
        # bounded reads, which on a cluster hold the shard connection's lock (measured apart,
        # in probe_subscribe)
        keys = self.backends[0]._keys
        await asyncio.sleep(0.1)
        used0 = self.masters.used_memory()
        for i, b in enumerate(self.backends):
            mine = [room for r, room in enumerate(self.rooms) if i in self.subscribers(r)]
            for room in mine:
                await b.broker._pubsub.ssubscribe(keys.channel("room", room).encode())
            for room in mine:
                b.broker._channels[keys.channel("room", room).encode()] = ("room", room)
        channels = [keys.channel("room", room) for room in self.rooms]
        want, deadline = len(self.rooms) * self.a.spread, time.monotonic() + 30
        while (have := self.masters.subscriptions(channels)) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {have} of {want} subscriptions active after 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        self.bytes_per_subscription = (self.masters.used_memory() - used0) / want

    async def probe_subscribe(self) -> dict[str, Any]:
        """``broker.subscribe`` of new channels, one at a time, on a node whose reader is
        running and idle (what a node does at the first local member of a room): the latency
        of each, then unsubscribed again."""
        broker = self.backends[0].broker
        times = []
        for k in range(self.a.probes):
            t = time.monotonic()
            await broker.subscribe("room", f"probe-{k}")
            times.append(time.monotonic() - t)
        for k in range(self.a.probes):
            await broker.unsubscribe("room", f"probe-{k}")
        if not times:
            return {"probes": 0}
        times.sort()
        return {"probes": len(times),
                "ms_mean": round(sum(times) / len(times) * 1e3, 2),
                "ms_median": round(times[len(times) // 2] * 1e3, 2),
                "ms_max": round(times[-1] * 1e3, 2)}

    async def close(self) -> None:
        for b in self.backends:
            await b.close()

    async def probe_latency(self) -> dict[str, Any]:
        """Plain publications from node 0, one every ``--latency-interval`` ms, to a room only
        node 1 is subscribed to: the time from the publish call to node 1's deliver callback,
        at a rate so low that nothing queues (what a quiet room sees)."""
        if len(self.backends) < 2 or self.a.latency_probes < 1:
            return {"probes": 0}
        await self.backends[1].broker.subscribe("room", LATENCY_ROOM)
        await asyncio.sleep(0.2)
        sender, latencies, lost = self.backends[0].broker, [], 0
        for k in range(self.a.latency_probes):
            payload = encode({"probe": k, "pad": self.content})
            sent = time.monotonic()
            await sender.publish("room", LATENCY_ROOM, payload)
            deadline = sent + 2.0
            while payload not in self.arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.0002)
            if payload in self.arrivals:
                latencies.append(self.arrivals[payload] - sent)
            else:
                lost += 1
            await asyncio.sleep(self.a.latency_interval / 1000)
        await self.backends[1].broker.unsubscribe("room", LATENCY_ROOM)
        latencies.sort()
        n = len(latencies)
        if not n:
            return {"probes": self.a.latency_probes, "lost": lost}
        return {"probes": self.a.latency_probes, "lost": lost,
                "ms_median": round(latencies[n // 2] * 1e3, 2),
                "ms_p90": round(latencies[min(n - 1, n * 9 // 10)] * 1e3, 2),
                "ms_max": round(latencies[-1] * 1e3, 2)}

    # --- publishing ---------------------------------------------------------------------------
    def plan(self, count: int) -> list[deque[int]]:
        """Room index of each message, queued at its publisher: message k goes to room k % R,
        from the room's subscribed nodes in turn."""
        queues: list[deque[int]] = [deque() for _ in self.backends]
        for k in range(count):
            r = k % len(self.rooms)
            subs = self.subscribers(r)
            queues[subs[(k // len(self.rooms)) % len(subs)]].append(r)
        return queues

    async def _publish(self, node: int, r: int, kept: bool) -> None:
        broker = self.backends[node].broker
        room = self.rooms[r]
        message = frame("message", {"content": self.content}, room=room, sender=self.sender)
        if kept:
            await broker.publish_kept(room, message, size=self.a.history_size, ttl=HISTORY_TTL)
        else:
            await broker.publish("room", room, encode(message))

    async def publish_all(self, count: int, kept: bool) -> None:
        queues = self.plan(count)

        async def worker(node: int) -> None:
            queue = queues[node]
            while queue:
                await self._publish(node, queue.popleft(), kept)

        await asyncio.gather(*(worker(i) for i in range(len(self.backends))
                               for _ in range(self.a.concurrency)))

    async def phase(self, name: str, count: int, kept: bool) -> dict[str, Any]:
        """Publish ``count`` messages, wait for every delivery; the figures of the phase."""
        c = self.counter
        due = count * self.a.spread
        d0, r0 = c.deliveries, c.redis
        split0 = self.masters.cpu_split()
        cpu0, py0, t0 = [a + b for a, b in split0], rusage(), time.monotonic()
        await self.publish_all(count, kept)
        t_pub = time.monotonic()
        complete, t_done = await wait_for(c, d0 + due, r0 + due, self.a.wait)
        split1 = self.masters.cpu_split()
        cpu1, py1 = [a + b for a, b in split1], rusage()
        sys_cpu = sum(b[0] - a[0] for a, b in zip(split0, split1))
        user_cpu = sum(b[1] - a[1] for a, b in zip(split0, split1))
        elapsed = time.monotonic() - t0
        by_master = [max(b - a - idle * elapsed, 0.0)
                     for a, b, idle in zip(cpu0, cpu1, self.idle_rate)]
        redis_cpu = sum(by_master)
        got, redis_got = c.deliveries - d0, c.redis - r0
        progress(f"{name}: {count:,} publishes in {t_pub - t0:.2f} s, last delivery at "
                 f"{t_done - t0:.2f} s")
        return {
            "phase": name,
            "publishes": count,
            "deliveries_due": due,
            "deliveries": got,
            "redis_deliveries": redis_got,
            "lost": due - got,
            "complete": complete and got == due and redis_got == due,
            "seconds_publishing": round(t_pub - t0, 4),
            "seconds_to_last_delivery": round(t_done - t0, 4),
            "publishes_per_s": round(count / (t_pub - t0), 1),
            "deliveries_per_s": round(got / (t_done - t0), 1),
            "redis_cpu_s": round(redis_cpu, 6),
            "redis_cpu_s_by_master": [round(x, 6) for x in by_master],
            "redis_sys_share": round(sys_cpu / max(sys_cpu + user_cpu, 1e-9), 3),
            "redis_cpu_us_per_publish": round(redis_cpu / count * 1e6, 3),
            "redis_cpu_us_per_delivery": round(redis_cpu / max(redis_got, 1) * 1e6, 3),
            "redis_busy": round(redis_cpu / (t_done - t0), 3),
            "client_cpu_us_per_publish": round((py1 - py0) / count * 1e6, 2),
        }

    # --- connections: presence and membership -------------------------------------------------
    async def _open(self, node: int, k: int) -> None:
        """What a node asks of Redis when a connection opens and joins its room (lifecycle's
        ``_open`` and ``Node.join``, the reads included; not the publications that announce
        it, which cost what a plain publish costs)."""
        b, user, conn, room = self.backends[node], f"user-{k:07d}", f"conn-{k:07d}", \
            self.rooms[k % len(self.rooms)]
        await b.presence.add_connection(user, conn, {"username": f"name-{k}",
                                                     "connected_at": time.time(),
                                                     "node": b.node_id})
        await b.rooms.user_rooms(user)
        await b.rooms.get(room)
        await b.rooms.member_count(room)
        await b.rooms.add_member(room, user, conn)
        await b.presence.online_count()
        await b.presence.mark_online(user)

    async def _close(self, node: int, k: int) -> None:
        """What a node asks of Redis when that connection closes (lifecycle's ``_close``,
        ``Node.leave``, the presence plugin's ``mark_offline``)."""
        b, user, conn, room = self.backends[node], f"user-{k:07d}", f"conn-{k:07d}", \
            self.rooms[k % len(self.rooms)]
        await b.rooms.remove_member(room, user, conn)
        await b.presence.remove_connection(user, conn)
        await b.presence.mark_offline(user)

    async def _each_connection(self, count: int, step: Any) -> float:
        queues = [deque(range(i, count, len(self.backends))) for i in range(len(self.backends))]

        async def worker(node: int) -> None:
            queue = queues[node]
            while queue:
                await step(node, queue.popleft())

        t = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(len(self.backends))
                               for _ in range(self.a.concurrency)))
        return time.monotonic() - t

    async def churn(self) -> dict[str, Any]:
        """``--connections`` connections open (one user each, each in one room), then all
        close: Redis CPU per open and per close, Redis memory per open connection (its
        presence, its membership, the node's records of both) and per user left in
        ``last_seen`` after the close."""
        count = self.a.connections
        used = self.masters.used_memory()
        for room in self.rooms:  # the rooms exist, as an operator's rooms do
            await self.backends[0].rooms.create(room)
        await asyncio.sleep(0.1)
        used0 = self.masters.used_memory()
        result: dict[str, Any] = {"connections": count,
                                  "bytes_per_room_created": round((used0 - used) / len(self.rooms),
                                                                  1)}
        for name, step in (("open", self._open), ("close", self._close)):
            cpu0, py0 = self.masters.cpu(), rusage()
            seconds = await self._each_connection(count, step)
            cpu1, py1 = self.masters.cpu(), rusage()
            redis_cpu = sum(max(b - a - idle * seconds, 0.0)
                            for a, b, idle in zip(cpu0, cpu1, self.idle_rate))
            await asyncio.sleep(0.1)
            used = self.masters.used_memory()
            result[name] = {"per_s": round(count / seconds, 1),
                            "redis_cpu_us_each": round(redis_cpu / count * 1e6, 2),
                            "client_cpu_us_each": round((py1 - py0) / count * 1e6, 1),
                            "bytes_each": round((used - used0) / count, 1)}
            progress(f"{count:,} connections {name}: {result[name]}")
        result["bytes_per_connection"] = result["open"]["bytes_each"]
        result["bytes_per_last_seen"] = result["close"]["bytes_each"]
        return result

    # --- the run ------------------------------------------------------------------------------
    async def warm_up(self) -> None:
        n = min(200, self.a.messages)
        await self.publish_all(n, kept=True)
        await self.publish_all(n, kept=False)
        ok, _ = await wait_for(self.counter, 2 * n * self.a.spread, 2 * n * self.a.spread,
                            self.a.wait)
        if not ok:
            raise RuntimeError("the warm-up's deliveries did not all arrive")
        self.counter.deliveries = self.counter.redis = 0
        self.masters.flushall()
        await asyncio.sleep(0.1)

    async def measure_idle(self) -> None:
        before = self.masters.cpu()
        await asyncio.sleep(IDLE_SECONDS)
        after = self.masters.cpu()
        self.idle_rate = [(b - a) / IDLE_SECONDS for a, b in zip(before, after)]

    async def kept_entries(self) -> int:
        client, keys = self.backends[0].client, self.backends[0]._keys
        total, step = 0, self.a.concurrency  # no more in flight than the pool has open
        for i in range(0, len(self.rooms), step):
            lengths = await asyncio.gather(*(client.xlen(keys.room(room, "h"))
                                             for room in self.rooms[i:i + step]))
            total += sum(int(n) for n in lengths)
        return total

    async def run(self) -> dict[str, Any]:
        t = time.monotonic()
        await self.start()
        subscribing = time.monotonic() - t
        progress(f"{len(self.rooms) * self.a.spread:,} subscriptions in {subscribing:.2f} s")
        t = time.monotonic()
        await self.warm_up()
        progress(f"warm-up in {time.monotonic() - t:.2f} s")
        await self.measure_idle()
        subscribe = await self.probe_subscribe()
        progress(f"broker.subscribe with the reader running: {subscribe}")
        latency = await self.probe_latency()
        progress(f"delivery latency to another node at a low rate: {latency}")
        m = self.a.messages
        half = m // 2
        used0 = self.masters.used_memory()
        kept1 = await self.phase("kept", half, kept=True)
        await asyncio.sleep(0.1)
        used1, entries1 = self.masters.used_memory(), await self.kept_entries()
        kept2 = await self.phase("kept", m - half, kept=True)
        await asyncio.sleep(0.1)
        used2, entries2 = self.masters.used_memory(), await self.kept_entries()
        kept = merge("kept", kept1, kept2)
        plain = await self.phase("plain", m, kept=False)
        connections = await self.churn() if self.a.connections > 0 else {"connections": 0}
        per_entry = (used2 - used1) / max(entries2 - entries1, 1)
        memory = {
            "used_memory_before": used0,
            "used_memory_after_first_half": used1,
            "used_memory_after": used2,
            "entries_after_first_half": entries1,
            "entries_kept": entries2,
            "bytes_per_entry": round(per_entry, 1),
            "bytes_per_room_history": round((used1 - used0 - per_entry * entries1)
                                            / len(self.rooms), 1),
            "bytes_per_entry_overall": round((used2 - used0) / max(entries2, 1), 1),
            "bytes_per_subscription": round(self.bytes_per_subscription, 1),
        }
        return {"phases": [kept, plain], "memory": memory, "subscribe": subscribe,
                "latency": latency, "churn": connections,
                "seconds_subscribing": round(subscribing, 3),
                "idle_redis_cpu_per_s": round(sum(self.idle_rate), 6)}


def merge(name: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two halves of a phase as one."""
    out: dict[str, Any] = {"phase": name}
    for k in ("publishes", "deliveries_due", "deliveries", "redis_deliveries", "lost",
              "seconds_publishing", "seconds_to_last_delivery", "redis_cpu_s"):
        out[k] = round(a[k] + b[k], 6)
    out["complete"] = a["complete"] and b["complete"]
    out["redis_sys_share"] = round((a["redis_sys_share"] * a["redis_cpu_s"]
                                    + b["redis_sys_share"] * b["redis_cpu_s"])
                                   / max(a["redis_cpu_s"] + b["redis_cpu_s"], 1e-9), 3)
    out["publishes_per_s"] = round(out["publishes"] / out["seconds_publishing"], 1)
    out["deliveries_per_s"] = round(out["deliveries"] / out["seconds_to_last_delivery"], 1)
    out["redis_cpu_s_by_master"] = [round(x + y, 6) for x, y in
                                    zip(a["redis_cpu_s_by_master"], b["redis_cpu_s_by_master"])]
    cpu, n = out["redis_cpu_s"], out["publishes"]
    out["redis_cpu_us_per_publish"] = round(cpu / n * 1e6, 3)
    out["redis_cpu_us_per_delivery"] = round(cpu / max(out["redis_deliveries"], 1) * 1e6, 3)
    out["redis_busy"] = round(cpu / out["seconds_to_last_delivery"], 3)
    out["client_cpu_us_per_publish"] = round(
        (a["client_cpu_us_per_publish"] * a["publishes"]
         + b["client_cpu_us_per_publish"] * b["publishes"]) / n, 2)
    return out


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                         check=False).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    service: RedisServer | RedisCluster = RedisCluster() if args.cluster else RedisServer()
    started = time.monotonic()
    service.start()
    try:
        ports = service.ports if isinstance(service, RedisCluster) else [service.port]
        masters = Masters(ports)
        sim = Sim(args, service.url, masters)
        try:
            results = await sim.run()
        finally:
            await sim.close()
            masters.close()
    finally:
        service.close()
    frame_bytes = len(encode(frame("message", {"content": "x" * args.content_bytes},
                                   room="room-000000", offset="9f2c0a1b:100",
                                   sender={"id": "user-000001", "username": "alice"})))
    return {
        "config": {
            "nodes": args.nodes, "rooms": args.rooms, "messages": args.messages,
            "spread": args.spread, "cluster": args.cluster, "masters": len(ports),
            "concurrency": args.concurrency, "content_bytes": args.content_bytes,
            "frame_bytes": frame_bytes, "history_size": args.history_size,
        },
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "redis": redis_version(),
            "redis_py": redis.__version__, "loadavg_at_end": list(os.getloadavg()),
        },
        **results,
        "seconds_total": round(time.monotonic() - started, 2),
    }


def table(result: dict[str, Any]) -> str:
    c = result["config"]
    where = f"Redis Cluster, {c['masters']} masters" if c["cluster"] else "one Redis"
    lines = [
        f"{where} (Redis {result['machine']['redis']}), {c['nodes']} nodes, {c['rooms']:,} rooms "
        f"each subscribed by {c['spread']} node(s), {c['messages']:,} messages a phase, "
        f"frame {c['frame_bytes']} bytes, {c['concurrency']} in flight per node",
        "",
        "| phase | publishes | deliveries (due) | Redis deliveries | publishes/s | deliveries/s "
        "| Redis CPU/publish | Redis CPU/delivery | Redis busy (sys share) | client CPU/publish |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["phases"]:
        lines.append(
            f"| {p['phase']} | {p['publishes']:,} | {p['deliveries']:,} ({p['deliveries_due']:,}) "
            f"| {p['redis_deliveries']:,} | {p['publishes_per_s']:,.0f} | "
            f"{p['deliveries_per_s']:,.0f} | {p['redis_cpu_us_per_publish']:.2f} µs | "
            f"{p['redis_cpu_us_per_delivery']:.2f} µs | {p['redis_busy']:.0%} ({p['redis_sys_share']:.0%}) | "
            f"{p['client_cpu_us_per_publish']:.0f} µs |")
    mem, sub, lat = result["memory"], result["subscribe"], result["latency"]
    lines += [
        "",
        f"history: {mem['entries_kept']:,} entries kept; {mem['bytes_per_entry']:,.0f} bytes per "
        f"entry (second half), {mem['bytes_per_room_history']:,.0f} bytes per room for its stream "
        f"and counter, {mem['bytes_per_entry_overall']:,.0f} bytes per entry all included; "
        f"{mem['bytes_per_subscription']:,.0f} bytes per channel subscription"
        + (" (under 10 entries a room in each half: the per-entry figure is not meaningful)"
           if mem["entries_after_first_half"] < 10 * c["rooms"] else ""),
        f"broker.subscribe with the reader running (node 0, {sub.get('probes', 0)} new channels): "
        f"median {sub.get('ms_median', 0):.2f} ms, mean {sub.get('ms_mean', 0):.2f} ms, "
        f"max {sub.get('ms_max', 0):.2f} ms",
        f"delivery to another node at a low rate ({lat.get('probes', 0)} probes, "
        f"{lat.get('lost', 0)} lost): median {lat.get('ms_median', 0):.2f} ms, "
        f"p90 {lat.get('ms_p90', 0):.2f} ms, max {lat.get('ms_max', 0):.2f} ms",
        churn_line(result["churn"]),
        f"idle Redis CPU subtracted: {result['idle_redis_cpu_per_s'] * 1e3:.2f} ms/s; "
        f"run took {result['seconds_total']:.1f} s",
    ]
    return "\n".join(lines)


def churn_line(churn: dict[str, Any]) -> str:
    if not churn.get("connections"):
        return "connections: not measured (--connections 0)"
    o, c = churn["open"], churn["close"]
    return (f"connections ({churn['connections']:,}, one room each): open {o['redis_cpu_us_each']:.1f} "
            f"µs Redis CPU and {o['client_cpu_us_each']:.0f} µs client CPU ({o['per_s']:,.0f}/s), "
            f"close {c['redis_cpu_us_each']:.1f} µs and {c['client_cpu_us_each']:.0f} µs "
            f"({c['per_s']:,.0f}/s); Redis memory {churn['bytes_per_connection']:,.0f} bytes per "
            f"open connection, {churn['bytes_per_last_seen']:,.0f} bytes per user in last_seen "
            f"after the close, {churn['bytes_per_room_created']:,.0f} bytes per room created")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="N simulated Switchboard nodes publishing through one real Redis (or a "
                    "3-master Redis Cluster) on loopback: Redis CPU and memory per message, "
                    "per delivery, per connection.")
    parser.add_argument("--nodes", type=int, default=4, help="simulated nodes (default 4)")
    parser.add_argument("--rooms", type=int, default=1000, help="room channels (default 1000)")
    parser.add_argument("--messages", type=int, default=20000,
                        help="messages per phase, kept and plain (default 20000)")
    parser.add_argument("--spread", type=int, default=2,
                        help="nodes subscribed to each room: Redis deliveries per publish "
                             "(default 2, at most --nodes)")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="publishes in flight per node (default 8)")
    parser.add_argument("--content-bytes", type=int, default=64,
                        help="characters of message text (default 64, as switchboard bench)")
    parser.add_argument("--history-size", type=int, default=100,
                        help="rooms.history_size (default 100)")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for a phase's last delivery (default 30)")
    parser.add_argument("--probes", type=int, default=10,
                        help="broker.subscribe calls timed with the reader running (default 10)")
    parser.add_argument("--connections", type=int, default=4000,
                        help="connections opened then closed, one user and one room each, "
                             "for presence and membership (default 4000; 0: none)")
    parser.add_argument("--latency-probes", type=int, default=10,
                        help="publications timed from one node to another at a low rate "
                             "(default 10; needs --nodes >= 2)")
    parser.add_argument("--latency-interval", type=float, default=20.0,
                        help="ms between the latency probes (default 20)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if not 1 <= args.spread <= args.nodes:
        parser.error("--spread must be between 1 and --nodes")
    if min(args.nodes, args.rooms, args.messages, args.concurrency) < 1 or args.messages < 2:
        parser.error("--nodes, --rooms, --concurrency must be >= 1 and --messages >= 2")
    if args.messages / args.rooms > args.history_size:
        print("note: more messages per room than --history-size: streams are trimmed, the "
              "per-entry memory figure is then that of a full history", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # killed (a timeout): exit through the finally blocks and tests.services' atexit hook,
    # which stop the redis-servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = all(p["complete"] and p["lost"] == 0 for p in result["phases"])
    if not ok:
        print("DELIVERIES LOST OR DUPLICATED", file=sys.stderr)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
