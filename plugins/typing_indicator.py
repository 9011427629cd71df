"""Typing indicators: ``typing`` relayed to a room's members or to a user, never to the sender.

An indicator is one (user, room or user, context). It ends when the user stops it
(``is_typing: false``), when the connection that last renewed it closes, or by itself
``typing.timeout`` seconds after its last renewal: the server then sends ``is_typing: false``.
Typing frames are best effort: over their own rate limit (``typing.messages_per_minute`` /
``burst`` per connection, instead of ``rate_limit``'s) they are dropped without an error, and a
slow client drops them instead of being closed. Timers are per node: each node ends the
indicators its connections started.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from server.plugin_api import (BaseModel, ConfigDict, Connection, Context, Envelope, ErrorCode,
                               Field, MessageRejected, NodeAPI, Plugin, PluginConfig, Stage,
                               TokenBucket, handles)


class TypingConfig(PluginConfig):
    """The ``typing`` section of websocket.yaml (docs/configuration.md)."""

    # unknown keys are the config loader's warnings, as for the core's sections
    model_config = ConfigDict(extra="ignore")
    timeout: float = Field(5.0, gt=0, allow_inf_nan=False)
    messages_per_minute: int = Field(60, gt=0)
    burst: int = Field(10, gt=0)


class TypingData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    is_typing: bool = Field(strict=True, description="true while typing, false to stop")
    context: str | None = Field(None, max_length=200,
                                description="what is being typed into, e.g. a thread id")


class TypingEvent(BaseModel):
    """Someone else is typing (or stopped) in a room of yours or to you."""

    is_typing: bool
    context: str | None = None


class _Key(NamedTuple):
    user_id: str
    kind: str  # "room" or "user"
    target: str
    context: str | None


class _Indicator:
    __slots__ = ("timer", "sender", "owner")

    def __init__(self, timer: asyncio.TimerHandle, sender: dict[str, str], owner: set[_Key]) -> None:
        self.timer = timer
        self.sender = sender
        #: the active keys of the connection that renewed it last (in its ``conn.state``)
        self.owner = owner


def _owned(conn: Connection) -> set[_Key]:
    owned: set[_Key] = conn.state.setdefault(TypingPlugin.name, {}).setdefault("indicators", set())
    return owned


class TypingRateLimit:
    """``typing.messages_per_minute`` / ``burst`` per connection; over it a frame is dropped
    without an answer. Stopping an indicator this connection holds always passes."""

    name = "typing_rate_limit"
    rate_limited_types = frozenset({"typing"})

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst

    def process(self, conn: Connection, env: Envelope) -> Envelope | None:
        if env.type != "typing":
            return env
        data: TypingData = env.payload
        if not data.is_typing and _key(conn.user.id, env.room, env.to, data) in _owned(conn):
            return env
        state = conn.state.setdefault(TypingPlugin.name, {})
        bucket = state.get("bucket")
        if bucket is None:
            bucket = state["bucket"] = TokenBucket(self.per_minute, self.burst)
        if bucket.take(time.monotonic()):
            conn.log.debug("typing_dropped", reason="rate_limit")
            return None
        return env


def _key(user_id: str, room: str | None, to: str | None, data: TypingData) -> _Key | None:
    if room is not None:
        return _Key(user_id, "room", room, data.context)
    if to is not None:
        return _Key(user_id, "user", to, data.context)
    return None


class TypingPlugin(Plugin[TypingConfig]):
    name = "typing"
    Config = TypingConfig
    section = "typing"
    emits = {"typing": TypingEvent}

    def __init__(self, config: TypingConfig, node: NodeAPI) -> None:
        super().__init__(config, node)
        self._active: dict[_Key, _Indicator] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def client_settings(self) -> dict[str, Any]:
        return {"timeout": self.config.timeout}

    def stages(self) -> list[Stage]:
        cfg = self.config
        return [TypingRateLimit(cfg.messages_per_minute, cfg.burst)]

    @handles("typing", schema=TypingData,
             description="typing started or stopped in a room (room) or to a user (to); no reply")
    async def typing(self, ctx: Context[TypingConfig], data: TypingData) -> None:
        if ctx.room is not None and ctx.to is not None:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "give 'room' or 'to', not both")
        key = _key(ctx.user.id, ctx.room, ctx.to, data)
        if key is None:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' or 'to' is required")
        if key.kind == "room":
            if key.target not in ctx.conn.rooms:
                raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {key.target!r} before typing in it")
            if not ctx.room_options(key.target).client_publish:
                raise MessageRejected(ErrorCode.FORBIDDEN, f"clients may not publish to {key.target!r}")
        elif key.target == ctx.user.id:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'to' must be another user")
        self._end(key)
        if data.is_typing:
            self._start(key, ctx)
        await self._relay(key, data.is_typing, ctx.user.public())

    async def on_disconnect(self, ctx: Context[TypingConfig]) -> None:
        """What this connection was typing stops now rather than after the timeout."""
        for key in list(_owned(ctx.conn)):
            indicator = self._end(key)
            if indicator is not None:
                await self._relay(key, False, indicator.sender)

    async def on_shutdown(self) -> None:
        for key in list(self._active):
            self._end(key)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- indicators -----------------------------------------------------------------------
    def _start(self, key: _Key, ctx: Context[TypingConfig]) -> None:
        timeout = self.config.timeout
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, key)
        owner = _owned(ctx.conn)
        owner.add(key)
        self._active[key] = _Indicator(timer, ctx.user.public(), owner)

    def _end(self, key: _Key) -> _Indicator | None:
        indicator = self._active.pop(key, None)
        if indicator is not None:
            indicator.timer.cancel()
            indicator.owner.discard(key)
        return indicator

    def _expire(self, key: _Key) -> None:
        indicator = self._end(key)
        if indicator is None:
            return
        task = asyncio.get_running_loop().create_task(self._relay(key, False, indicator.sender))
        self._tasks.add(task)
        task.add_done_callback(self._expired)

    def _expired(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("typing_stop_failed", exc_info=task.exception())

    async def _relay(self, key: _Key, is_typing: bool, sender: dict[str, str]) -> None:
        data: dict[str, Any] = {"is_typing": is_typing}
        if key.context is not None:
            data["context"] = key.context
        if key.kind == "room":
            await self.node.send_to_room(key.target, "typing", data, exclude_user=key.user_id,
                                             droppable=True, sender=sender)
        else:
            await self.node.send_to_user(key.target, "typing", data, droppable=True,
                                             sender=sender, to=key.target)
