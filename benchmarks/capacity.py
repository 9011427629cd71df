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

The measurement is in benchmarks/capacity_sim.py (``Sim``), the Redis and process helpers in
benchmarks/capacity_redis.py; this module starts the Redis, runs the steps, prints the table and
writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from benchmarks.capacity_redis import Masters, redis_version, room_frame_bytes  # noqa: E402
from benchmarks.capacity_sim import Sim  # noqa: E402
from tests.services import RedisCluster, RedisServer  # noqa: E402


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
    frame_bytes = room_frame_bytes(args.content_bytes, "room-000000")
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
