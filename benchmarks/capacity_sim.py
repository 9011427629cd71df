"""The measurement of benchmarks/capacity.py: ``Sim``, the simulated nodes on one Redis (or a
Redis Cluster) and the steps it times (the probes, the kept and plain phases, the connections'
churn), and ``merge``, two halves of a phase as one."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from typing import Any

from benchmarks.capacity_redis import (LATENCY_ROOM, Counter, Masters, deliver_for, node_backend,
                                       progress, rusage, wait_for)
from server.protocol import encode, frame

HISTORY_TTL = 3600.0  # rooms.history_ttl's default
IDLE_SECONDS = 1.0


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
