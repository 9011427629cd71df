"""What one room publication costs on the Redis backend: node CPU to publish it (``kept``:
``broker.publish_kept``, the chat path that numbers the message, appends it to the room's
history stream and publishes it; ``plain``: ``broker.publish``, typing, join/leave), node CPU
to receive and dispatch it on another node, redis-server CPU, and bytes on the wire.

Method: a redis-server of its own (tests/services.py: no persistence, a free loopback port) and
two nodes, each the real backend (``server.backends.redis.RedisBackend``, config from
``server.config.load_config``) in a process of its own, so that each one's CPU is its own:

* the publisher (this process) is subscribed to every room, as a node holding the sender is:
  it hands each publication to its own deliver callback at once and reads (and drops) its
  echo from Redis; its CPU covers both;
* the receiver (a child process) is subscribed to every room and counts what its deliver
  callback gets: its CPU is a publication's read, decode and dispatch, without the hub's
  WebSocket writes.

Each phase publishes ``--messages`` room frames (a ``message`` frame with ``--content-bytes``
characters, as ``Node.post_to_room`` builds it) to ``--rooms`` rooms, with ``--concurrency``
publishes in flight (1: one sender, one frame after the other; more: many connections sending
at once, as in the throughput test). Node CPU is ``getrusage`` of each process from the first
publish until the receiver has every publication and the publisher every echo (the
publisher's idle rate, measured first, subtracted); Redis CPU is ``used_cpu_sys +
used_cpu_user`` of ``INFO cpu`` and the bytes ``total_net_input_bytes`` and
``total_net_output_bytes`` of ``INFO stats``, read before and after (Redis's idle rate
subtracted). Output bytes include the delivery to both nodes (the echo is one of them).
A warm-up (then FLUSHALL) loads the script and opens the pools first.

    .venv/bin/python benchmarks/redis_publish.py                    # 20,000 a phase
    .venv/bin/python benchmarks/redis_publish.py --concurrency 1,16 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from benchmarks.capacity_redis import redis_version, room_frame_bytes, rusage  # noqa: E402
from server.backends.base import Route  # noqa: E402
from server.backends.redis import RedisBackend  # noqa: E402
from server.config import load_config  # noqa: E402
from server.protocol import encode, frame  # noqa: E402

PREFIX = "switchboard"
HISTORY_SIZE = 100
HISTORY_TTL = 3600.0


def backend(node: str, url: str) -> RedisBackend:
    config = load_config(None, env={}, overrides={"backend": {"type": "redis", "redis": {
        "url": url, "prefix": PREFIX}}}).config
    return RedisBackend(node, config)


def rooms_of(count: int) -> list[str]:
    return [f"room-{r:05d}" for r in range(count)]


async def subscribe_all(b: RedisBackend, rooms: list[str]) -> None:
    for room in rooms:
        await b.broker.subscribe("room", room)


# --- the receiver: a child process, driven over stdin/stdout, one JSON line each ------------
async def receiver(url: str, rooms: int) -> None:
    count = 0
    target = -1
    done = asyncio.Event()

    def deliver(kind: str, key: str, payload: bytes, route: Route) -> None:
        nonlocal count
        count += 1
        if count == target:
            done.set()

    b = backend("receiver", url)
    await b.client.ping()
    await b.broker.start(deliver)
    await subscribe_all(b, rooms_of(rooms))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "expect":  # count from now; report when ``n`` more have arrived
            count, target = 0, cmd["n"]
            done.clear()
            cpu0, t0 = rusage(), time.monotonic()
            print(json.dumps({"armed": True}), flush=True)
            try:
                await asyncio.wait_for(done.wait(), cmd["timeout"])
            except TimeoutError:
                pass
            print(json.dumps({"got": count, "cpu": rusage() - cpu0,
                              "seconds": time.monotonic() - t0}), flush=True)
        elif cmd["op"] == "quit":
            break
    await b.close()


class Receiver:
    def __init__(self, url: str, rooms: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "receiver", "--url", url, "--rooms", str(rooms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.read()  # ready

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the receiver process died")
        return dict(json.loads(line))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send(op="quit")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


# --- Redis, from the side -----------------------------------------------------------------
class Side:
    def __init__(self, port: int) -> None:
        self.c = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    def read(self) -> tuple[float, int, int]:
        cpu = self.c.info("cpu")
        stats = self.c.info("stats")
        return (float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
                int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]))


# --- the publisher: this process ----------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, url: str, side: Side) -> None:
        self.a = args
        self.side = side
        self.url = url
        self.rooms = rooms_of(args.rooms)
        self.echoes = 0  # publications the publisher read back from Redis (its own)
        self.local = 0
        self.b = backend("publisher", url)
        self.sender = {"id": "user-000001", "username": "alice"}
        self.content = "x" * args.content_bytes
        self.idle_node = 0.0  # CPU s/s of this process idle
        self.idle_redis = (0.0, 0.0, 0.0)  # CPU s/s, bytes/s in, out

    async def start(self) -> None:
        def deliver(kind: str, key: str, payload: bytes, route: Route) -> None:
            self.local += 1

        # count the echoes as they reach the broker, whatever reads them (patched before the
        # start: the reader may hold the method)
        broker: Any = self.b.broker
        inner = broker._received

        def counting(*a: Any, **k: Any) -> Any:
            self.echoes += 1
            return inner(*a, **k)

        broker._received = counting
        await self.b.client.ping()
        await broker.start(deliver)
        await subscribe_all(self.b, self.rooms)

    async def publish_all(self, count: int, kept: bool, concurrency: int) -> None:
        broker, rooms = self.b.broker, self.rooms
        per = [count // concurrency + (1 if i < count % concurrency else 0)
               for i in range(concurrency)]

        async def worker(w: int, n: int) -> None:
            for k in range(n):
                room = rooms[(w + k * concurrency) % len(rooms)]
                message = frame("message", {"content": self.content}, room=room,
                                sender=self.sender)
                if kept:
                    await broker.publish_kept(room, message, size=HISTORY_SIZE, ttl=HISTORY_TTL)
                else:
                    await broker.publish("room", room, encode(message))

        await asyncio.gather(*(worker(w, n) for w, n in enumerate(per)))

    async def wait_echoes(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.echoes < n:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def measure_idle(self, seconds: float = 1.0) -> None:
        r0, n0, t0 = self.side.read(), rusage(), time.monotonic()
        await asyncio.sleep(seconds)
        r1, n1, dt = self.side.read(), rusage(), time.monotonic() - t0
        self.idle_node = (n1 - n0) / dt
        self.idle_redis = tuple((b - a) / dt for a, b in zip(r0, r1))  # type: ignore[assignment]

    async def phase(self, recv: Receiver, kept: bool, count: int, concurrency: int
                    ) -> dict[str, Any]:
        recv.send(op="expect", n=count, timeout=self.a.wait)
        recv.read()  # armed
        self.echoes = 0
        r0 = self.side.read()
        c0, t0 = rusage(), time.monotonic()
        await self.publish_all(count, kept, concurrency)
        t_pub = time.monotonic() - t0
        complete = await self.wait_echoes(count, self.a.wait)
        c1, t1 = rusage(), time.monotonic()
        got = await asyncio.get_running_loop().run_in_executor(None, recv.read)
        r1 = self.side.read()
        dt = t1 - t0
        node_cpu = (c1 - c0) - self.idle_node * dt
        redis_dt = max(dt, got["seconds"])
        redis_cpu = (r1[0] - r0[0]) - self.idle_redis[0] * redis_dt
        bytes_in = (r1[1] - r0[1]) - self.idle_redis[1] * redis_dt
        bytes_out = (r1[2] - r0[2]) - self.idle_redis[2] * redis_dt
        return {
            "phase": "kept" if kept else "plain", "concurrency": concurrency,
            "publishes": count, "received": got["got"], "echoes": self.echoes,
            "complete": complete and got["got"] == count,
            "seconds_publish": round(t_pub, 3), "seconds": round(dt, 3),
            "publishes_per_s": round(count / t_pub),
            "node_publish_cpu_us": round(node_cpu / count * 1e6, 1),
            "node_receive_cpu_us": round(got["cpu"] / max(got["got"], 1) * 1e6, 1),
            "redis_cpu_us": round(redis_cpu / count * 1e6, 2),
            "bytes_in": round(bytes_in / count, 1),
            "bytes_out": round(bytes_out / count, 1),
            "bytes_out_per_delivery": round(bytes_out / count / 2, 1),
        }

    async def warm_up(self, recv: Receiver) -> None:
        for kept in (True, False):
            await self.phase(recv, kept, min(2000, self.a.messages), 8)
        self.side.c.flushall()
        await self.b.broker.publish("room", self.rooms[0], b"{}")  # the pubsub connection lives on
        await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.b.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.services import RedisServer

    server = RedisServer()
    server.start()
    started = time.monotonic()
    try:
        side = Side(server.port)
        bench = Bench(args, server.url, side)
        await bench.start()
        recv = Receiver(server.url, args.rooms)
        try:
            await asyncio.sleep(0.3)
            await bench.warm_up(recv)
            await bench.measure_idle()
            phases = []
            for _ in range(args.repeat):
                for concurrency in args.concurrency:
                    for kept in (True, False):
                        phases.append(await bench.phase(recv, kept, args.messages, concurrency))
                        print(f"[redis_publish] {phases[-1]}", file=sys.stderr, flush=True)
        finally:
            recv.close()
            await bench.close()
            side.c.close()
    finally:
        server.close()
    frame_bytes = room_frame_bytes(args.content_bytes, "room-00000")
    return {
        "config": {"messages": args.messages, "rooms": args.rooms,
                   "concurrency": args.concurrency, "content_bytes": args.content_bytes,
                   "frame_bytes": frame_bytes, "history_size": HISTORY_SIZE,
                   "repeat": args.repeat},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "redis_py": redis.__version__, "redis": redis_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "idle": {"node_cpu_per_s": round(bench.idle_node, 5),
                 "redis_cpu_per_s": round(bench.idle_redis[0], 5)},
        "phases": phases,
        "seconds_total": round(time.monotonic() - started, 1),
    }


def table(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        f"one Redis {m['redis']}, redis-py {m['redis_py']}, Python {m['python']}, "
        f"{m['cpus']} CPUs; {c['messages']:,} publications a phase to {c['rooms']} rooms, "
        f"frame {c['frame_bytes']} bytes, 2 nodes subscribed (the publisher's echo included)",
        "",
        "| phase | in flight | publishes/s | node CPU / publish (echo incl.) | node CPU / receive "
        "| Redis CPU / publish | bytes in / publish | bytes out / publish |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["phases"]:
        lines.append(
            f"| {p['phase']} | {p['concurrency']} | {p['publishes_per_s']:,} | "
            f"{p['node_publish_cpu_us']:.0f} µs | {p['node_receive_cpu_us']:.1f} µs | "
            f"{p['redis_cpu_us']:.1f} µs | {p['bytes_in']:.0f} | {p['bytes_out']:.0f} |"
            + ("" if p["complete"] else " INCOMPLETE"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000,
                        help="publications a phase (default 20000)")
    parser.add_argument("--rooms", type=int, default=100, help="rooms (default 100)")
    parser.add_argument("--concurrency", default="1,16",
                        help="publishes in flight, a comma-separated list (default 1,16)")
    parser.add_argument("--content-bytes", type=int, default=64,
                        help="characters of message text (default 64, as switchboard bench)")
    parser.add_argument("--repeat", type=int, default=1, help="run every phase N times")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for a phase's last delivery (default 60)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--role", default="publisher", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "receiver":
        asyncio.run(receiver(args.url, args.rooms))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = all(p["complete"] for p in result["phases"])
    if not ok:
        print("PUBLICATIONS LOST", file=sys.stderr)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
