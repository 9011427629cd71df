"""Redis and process helpers of benchmarks/capacity.py: INFO of every master seen from the
side, the simulated nodes' backends with their counting deliver callbacks, the wait for the
last delivery, this process's CPU and the progress lines on stderr."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

from server.backends.base import Route
from server.backends.redis import RedisBackend
from server.config import load_config
from server.protocol import encode, frame

PREFIX = "switchboard"


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


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                         check=False).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


def room_frame_bytes(content_bytes: int, room: str) -> int:
    """The size of a room message as subscribers get it: ``content_bytes`` of content, the
    sender, an offset."""
    return len(encode(frame("message", {"content": "x" * content_bytes}, room=room,
                            offset="9f2c0a1b:100",
                            sender={"id": "user-000001", "username": "alice"})))
