"""The broker of one process: a publication goes straight to this node's deliver function,
for the channels it is subscribed to (the same rule the Redis broker follows across nodes, so
a node that forgets to subscribe fails its tests on the memory backend too)."""

from __future__ import annotations

from typing import Any, Protocol

from .base import DEFAULT_ROUTE, Channels, Deliver, Route, TargetKind


class Keep(Protocol):
    """Keeps a message in a room's history at once (setting its offset); returns it encoded."""

    def __call__(self, room: str, message: dict[str, Any], *, size: int, ttl: float) -> bytes: ...


class MemoryBroker:
    def __init__(self, keep: Keep) -> None:
        self._keep = keep
        self._deliver: Deliver | None = None
        self.channels = Channels()

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None
        self.channels.clear()

    async def subscribe(self, kind: TargetKind, key: str) -> None:
        self.channels.add(kind, key)

    async def unsubscribe(self, kind: TargetKind, key: str) -> None:
        self.channels.discard(kind, key)

    async def publish(self, kind: TargetKind, key: str, payload: bytes,
                      route: Route = DEFAULT_ROUTE) -> None:
        if self._deliver is not None and self.channels.has(kind, key):
            self._deliver(kind, key, payload, route)

    async def publish_kept(self, room: str, message: dict[str, Any], *, size: int, ttl: float,
                           route: Route = DEFAULT_ROUTE) -> str:
        payload = self._keep(room, message, size=size, ttl=ttl)  # no await in between
        await self.publish("room", room, payload, route)
        return str(message["offset"])
