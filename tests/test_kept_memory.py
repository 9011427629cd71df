"""What a kept message costs in memory: the memory backend keeps each history and inbox entry
as encoded bytes, and those bytes must be about as big as the JSON. orjson (3.12 and later)
returns bytes that hold a buffer of ~8 KiB whatever the JSON's length, so keeping them as
they come would cost ten times a typical message for as long as it is kept."""

from __future__ import annotations

import tracemalloc

from server.backends.memory import MemoryHistory

MESSAGES = 1000


def test_a_kept_message_costs_about_its_json() -> None:
    history = MemoryHistory("epoch")
    content = "x" * 500
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sizes = [len(history.keep("room", {"type": "message", "data": {"content": content}},
                                  size=MESSAGES, ttl=3600.0))
                 for _ in range(MESSAGES)]
        per_message = (tracemalloc.get_traced_memory()[0] - before) / MESSAGES
    finally:
        tracemalloc.stop()
    json_size = sum(sizes) / MESSAGES
    assert 500 < json_size < 700
    # the bytes themselves plus the stream's bookkeeping (offset, expiry): well under 2x the JSON
    assert per_message < 2 * json_size, (per_message, json_size)
