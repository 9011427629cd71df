"""Private conversations in this process's memory (``base.Conversations``).

The messages of each pair of users are a history of its own, handed in by the memory backend
(a ``MemoryHistory`` with an epoch apart from the rooms' and the inbox's); this module keeps
each user's list of conversations: peer -> the latest message, oldest first, so that the most
recent are at the end and the oldest go first when the list is over its ``keep``. A message is
encoded once, where the history keeps it; the lists hold those same bytes. The memory
backend's sweep drops the entries whose last message is older than their ``ttl``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

from .base import ConversationEntry, History, pair_key


class _KeepingHistory(History, Protocol):
    def keep(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> bytes:
        """``append`` in one synchronous step, returning the message as kept (encoded)."""
        ...


class _Entry:
    __slots__ = ("updated", "expires", "message")

    def __init__(self, updated: float, expires: float, message: bytes) -> None:
        self.updated = updated
        self.expires = expires  # Unix seconds; 0: never
        self.message = message  # encoded: readers decode their own copy


class MemoryConversations:
    def __init__(self, history: _KeepingHistory) -> None:
        self._history = history
        self._lists: dict[str, OrderedDict[str, _Entry]] = {}

    @property
    def history(self) -> History:
        return self._history

    async def append(self, sender: str, to: str, message: dict[str, Any], *, size: int,
                     ttl: float, keep: int) -> str:
        kept = self._history.keep(pair_key(sender, to), message, size=size, ttl=ttl)
        if size:
            now = time.time()
            self._note(sender, to, kept, now, keep, ttl)
            if to != sender:
                self._note(to, sender, kept, now, keep, ttl)
        return str(message["offset"])

    def _note(self, user_id: str, peer: str, message: bytes, now: float, keep: int,
              ttl: float) -> None:
        entries = self._lists.get(user_id)
        if entries is None:
            entries = self._lists[user_id] = OrderedDict()
        entries.pop(peer, None)
        entries[peer] = _Entry(now, now + ttl if ttl else 0.0, message)
        while len(entries) > max(keep, 1):
            entries.popitem(last=False)

    async def recent(self, user_id: str, *, limit: int, ttl: float) -> list[ConversationEntry]:
        entries = self._lists.get(user_id)
        if not entries:
            return []
        now = time.time()
        cutoff = now - ttl if ttl else 0.0
        out: list[ConversationEntry] = []
        for peer, entry in reversed(entries.items()):
            if len(out) >= limit:
                break
            if entry.updated > cutoff and not (entry.expires and entry.expires <= now):
                out.append(ConversationEntry(peer, orjson.loads(entry.message), entry.updated))
        return out

    def sweep(self, now: float) -> None:
        """Drop the entries whose time is up, and the lists left empty."""
        for user_id in list(self._lists):
            entries = self._lists[user_id]
            for peer in [p for p, e in entries.items() if e.expires and e.expires <= now]:
                del entries[peer]
            if not entries:
                del self._lists[user_id]

    def __len__(self) -> int:
        """Users with a list (for the memory tests)."""
        return len(self._lists)
