"""Python's cyclic garbage collector in a ``switchboard serve`` process (``server.gc_threshold``,
``server.gc_freeze``).

A connection keeps a few hundred container objects alive for its whole life. With CPython's
default thresholds (a young collection every 700 allocations net, a full one every hundred of
those once enough has survived) a storm of connections triggers full collections one after the
other, each walking every object the process holds: 100-200 ms with the event loop stopped,
a quarter of the server's time in a 5,000-connection storm and the whole p99 of a busy room's
delivery latency (docs/benchmarks.md, "The garbage collector"). Two settings, applied once the
server is about to listen:

- a larger young-generation threshold: ten times fewer collections, each still short (a young
  collection walks only the objects allocated since the last one: ~2 ms at 10,000);
- ``gc.freeze()`` after start-up: what start-up made (modules, the config, the plugins, the
  schemas) lives as long as the process and is moved out of the collector's sight, so no full
  collection walks it again. A ``gc.collect()`` first, so no start-up garbage is frozen with it.

Only ``serve`` calls this: the collector is the process's, and a test runner that embeds the
server keeps its own settings.
"""

from __future__ import annotations

import gc


def settle(threshold: int, freeze: bool) -> None:
    """``threshold``: the young generation's (0 keeps CPython's); ``freeze``: start-up's
    objects out of the collector's sight."""
    if threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)
    if freeze:
        gc.collect()
        gc.freeze()


def state() -> dict[str, list[int] | int]:
    """What ``GET /api/stats`` reports as ``gc``: the thresholds, the objects frozen, and the
    collections of each generation so far."""
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count(),
            "collections": [g["collections"] for g in gc.get_stats()]}
