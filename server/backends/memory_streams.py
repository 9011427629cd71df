"""The numbered, bounded, expiring streams under the memory backend's room history, inbox and
private conversations (``memory.MemoryHistory``, ``memory.MemoryInbox``): offsets are
``<epoch>:<seq>``, and a stream's numbering never goes back within its epoch."""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

import orjson

from ..protocol import encode


def _parse_offset(offset: str | None) -> tuple[str, int] | None:
    """``<epoch>:<seq>`` -> (epoch, seq); None for anything else."""
    epoch, _, seq = (offset or "").rpartition(":")
    if not epoch or not (seq.isascii() and seq.isdigit()):
        return None
    return epoch, int(seq)


#: slots of the numbering floors that forgotten streams leave behind (see Streams)
_FLOOR_SLOTS = 4096


class _Stream:
    """A bounded, expiring sequence. ``seq`` numbers every item ever added and never goes
    back, so an offset is never reused within an epoch; ``items`` holds the kept ones, with
    consecutive numbers."""

    __slots__ = ("seq", "ttl", "items")

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self.ttl = 0.0
        #: (number, time added, the message encoded): readers decode their own copy
        self.items: deque[tuple[int, float, bytes]] = deque()

    def add(self, message: bytes, *, size: int, ttl: float, now: float) -> None:
        self.seq += 1
        self.ttl = ttl
        items = self.items
        items.append((self.seq, now, message))
        while len(items) > size:
            items.popleft()
        self.expire(now)

    def expire(self, now: float) -> None:
        items = self.items
        if self.ttl > 0:
            while items and now - items[0][1] > self.ttl:
                items.popleft()

    def first(self) -> int:
        """The number of the oldest kept item (``seq + 1`` when none is kept)."""
        return self.items[0][0] if self.items else self.seq + 1

    def after(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept items numbered above ``seq``, oldest first, at most ``limit``: copies."""
        found = itertools.islice(self.items, max(seq + 1 - self.first(), 0), None)
        if limit is not None:
            found = itertools.islice(found, max(limit, 0))
        return [orjson.loads(m) for _, _, m in found]


class Streams:
    """Streams by key (room or user) under one epoch. Expired items are dropped when a stream
    is read and by :meth:`sweep`, which also forgets every stream left with no item.

    The numbering of a key must not go back within the epoch even when its stream was
    forgotten: a forgotten stream's ``seq`` raises the floor of its key's slot (one of
    ``_FLOOR_SLOTS``, by hash), and a stream starts at its slot's floor. That takes fixed
    memory; a key sharing a slot with a forgotten stream numbered higher starts above where
    it was, which a client catching up sees as ``recovered: false``, never as a silent gap."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._streams: dict[str, _Stream] = {}
        self._floors = [0] * _FLOOR_SLOTS

    def offset(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"

    def seq_of(self, offset: str | None) -> int | None:
        """The number an offset of this epoch stands for; None for any other."""
        parsed = _parse_offset(offset)
        return parsed[1] if parsed is not None and parsed[0] == self.epoch else None

    def _slot(self, key: str) -> int:
        return hash(key) % _FLOOR_SLOTS

    def kept(self, key: str) -> bool:
        """Whether ``key`` has a stream (possibly with only expired items)."""
        return key in self._streams

    def read(self, key: str) -> _Stream:
        """``key``'s stream without its expired items; an empty one (not kept) when it has none."""
        stream = self._streams.get(key)
        if stream is None:
            return _Stream(self._floors[self._slot(key)])
        stream.expire(time.time())
        return stream

    def add(self, key: str, message: dict[str, Any], *, size: int, ttl: float) -> bytes:
        """Set ``message``'s ``offset``, keep it encoded; returns the encoding."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(self._floors[self._slot(key)])
        message["offset"] = self.offset(stream.seq + 1)
        # a copy the exact length: orjson's own bytes keep a buffer of ~8 KiB whatever the
        # JSON's length (orjson >= 3.12), ten times a typical message, for as long as it is kept
        data = bytes(memoryview(encode(message)))
        stream.add(data, size=size, ttl=ttl, now=time.time())
        return data

    def sweep(self, now: float) -> list[str]:
        """Drop the expired items of every stream; forget the streams left empty and return
        their keys."""
        empty = []
        for key, stream in self._streams.items():
            stream.expire(now)
            if not stream.items:
                empty.append(key)
        for key in empty:
            self.forget(key)
        return empty

    def forget(self, key: str) -> None:
        """Drop ``key``'s stream; its numbering goes on from its slot's floor."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            slot = self._slot(key)
            self._floors[slot] = max(self._floors[slot], stream.seq)
