"""The generic plugin store (``base.Store``) in this process's memory.

Every key of every namespace lives in one dict with its expiry; the memory backend's sweep
drops what expired, and reads never return it before then. Values are kept as given: callers
pass JSON-able values (the Redis store serialises them), so a stored dict is copied on the way
in and out and no caller can change what another one reads.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from typing import Any

from .base import stream_id_key


class _Key:
    __slots__ = ("kind", "value", "expires")

    def __init__(self, kind: str, value: Any, expires: float) -> None:
        self.kind = kind  # "value", "hash" or "stream"
        self.value = value
        self.expires = expires  # Unix seconds; 0: never


class _Stream:
    """Entries by id, oldest first, each with the time it expires (0: never)."""

    __slots__ = ("entries", "last_ms", "seq")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.last_ms = 0
        self.seq = 0

    def next_id(self, now: float) -> str:
        ms = int(now * 1000)
        if ms > self.last_ms:
            self.last_ms, self.seq = ms, 0
        else:
            self.seq += 1
        return f"{self.last_ms}-{self.seq}"

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            expires, _ = next(iter(entries.values()))
            if not expires or expires > now:
                break
            entries.popitem(last=False)


def _copy(value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


class MemoryStoreData:
    """All namespaces' keys: ``(namespace, key) -> _Key``."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], _Key] = {}

    def sweep(self, now: float) -> None:
        for name in list(self.keys):
            item = self.keys[name]
            if item.expires and item.expires <= now:
                del self.keys[name]
            elif item.kind == "stream":
                item.value.expire(now)
                if not item.value.entries:
                    del self.keys[name]

    def __len__(self) -> int:
        return len(self.keys)


class MemoryStore:
    """One namespace of :class:`MemoryStoreData`."""

    def __init__(self, data: MemoryStoreData, namespace: str) -> None:
        self._data = data
        self._ns = namespace

    def _get(self, key: str, kind: str) -> Any | None:
        item = self._data.keys.get((self._ns, key))
        if item is None:
            return None
        if item.expires and item.expires <= time.time():
            del self._data.keys[(self._ns, key)]
            return None
        if item.kind != kind:
            raise TypeError(f"store key {key!r} holds a {item.kind}, not a {kind}")
        return item.value

    def _put(self, key: str, kind: str, value: Any, ttl: float) -> None:
        self._data.keys[(self._ns, key)] = _Key(kind, value, time.time() + ttl if ttl else 0.0)

    # --- values ---------------------------------------------------------------------------
    async def get(self, key: str) -> Any | None:
        return _copy(self._get(key, "value"))

    async def set(self, key: str, value: Any, *, ttl: float = 0.0) -> None:
        self._put(key, "value", _copy(value), ttl)

    async def delete(self, key: str) -> bool:
        return self._data.keys.pop((self._ns, key), None) is not None

    # --- hashes ---------------------------------------------------------------------------
    async def hash_get(self, key: str, field: str) -> Any | None:
        fields = self._get(key, "hash")
        return _copy(fields.get(field)) if fields else None

    async def hash_set(self, key: str, field: str, value: Any, *, ttl: float = 0.0) -> None:
        fields = self._get(key, "hash")
        if fields is None:
            fields = {}
        fields[field] = _copy(value)
        self._put(key, "hash", fields, ttl)

    async def hash_all(self, key: str) -> dict[str, Any]:
        fields = self._get(key, "hash")
        return {f: _copy(v) for f, v in fields.items()} if fields else {}

    async def hash_delete(self, key: str, *fields: str) -> int:
        values = self._get(key, "hash")
        if not values:
            return 0
        removed = sum(values.pop(f, None) is not None for f in fields)
        if not values:
            del self._data.keys[(self._ns, key)]
        return removed

    # --- streams --------------------------------------------------------------------------
    async def stream_add(self, key: str, value: Any, *, maxlen: int, ttl: float = 0.0) -> str:
        now = time.time()
        stream = self._get(key, "stream")
        item = self._data.keys.get((self._ns, key))
        if stream is None:
            stream = _Stream()
            item = _Key("stream", stream, 0.0)
            self._data.keys[(self._ns, key)] = item
        entry_id = stream.next_id(now)
        stream.entries[entry_id] = (now + ttl if ttl else 0.0, _copy(value))
        while len(stream.entries) > max(maxlen, 0):
            stream.entries.popitem(last=False)
        if not stream.entries:
            del self._data.keys[(self._ns, key)]
        return entry_id

    async def stream_read(self, key: str, *, after: str | None = None,
                          limit: int = 100) -> list[tuple[str, Any]]:
        stream = self._get(key, "stream")
        if stream is None:
            return []
        stream.expire(time.time())
        floor = stream_id_key(after) if after else None
        out: list[tuple[str, Any]] = []
        for entry_id, (_, value) in stream.entries.items():
            if floor is not None and stream_id_key(entry_id) <= floor:
                continue
            out.append((entry_id, _copy(value)))
            if len(out) >= limit:
                break
        return out

    async def stream_delete(self, key: str, ids: list[str]) -> int:
        stream = self._get(key, "stream")
        if stream is None:
            return 0
        removed = sum(stream.entries.pop(i, None) is not None for i in ids)
        if not stream.entries:
            del self._data.keys[(self._ns, key)]
        return removed
