"""Chat: rooms (join/leave) and room messages with an ``ack`` to the sender.

This is the day-one minimum; private messages, broadcast, history and the inbox build on it.
"""

from __future__ import annotations

from typing import Any

from server.plugin_api import (BaseModel, ConfigDict, Context, ErrorCode, Field, MessageRejected,
                               Plugin, handles, make_frame)


class JoinData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    since: str | None = Field(None, description="offset of the last message seen; replays what was missed")


class LeaveData(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MessageData(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: str = Field(description="the text of the message")


def _need_room(ctx: Context) -> str:
    if not ctx.room:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' is required")
    return ctx.room


class ChatPlugin(Plugin):
    name = "chat"

    @handles("join", schema=JoinData, description="join a room; with data.since, replay what was missed")
    async def join(self, ctx: Context, data: JoinData) -> None:
        room = _need_room(ctx)
        count = await ctx.join(room)
        history = self.services.backend.history
        missed: list[dict[str, Any]] = []
        recovered = True
        if data.since is not None:
            opts = ctx.room_options(room)
            page = await history.since(room, data.since, limit=max(opts.history_size, 1))
            missed, recovered = page.messages, page.recovered
        await ctx.reply("joined", {"room": room, "members_count": count, "recovered": recovered,
                                   "missed": missed, "offset": await history.current(room)},
                        room=room)

    @handles("leave", schema=LeaveData, description="leave a room")
    async def leave(self, ctx: Context, data: LeaveData) -> None:
        room = _need_room(ctx)
        count = await ctx.leave(room)
        await ctx.reply("left", {"room": room, "members_count": count}, room=room)

    @handles("message", schema=MessageData, description="a message to a room's members")
    async def message(self, ctx: Context, data: MessageData) -> None:
        room = _need_room(ctx)
        if room not in ctx.conn.rooms:
            raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {room!r} before sending to it")
        opts = ctx.room_options(room)
        if not opts.client_publish:
            raise MessageRejected(ErrorCode.FORBIDDEN, f"clients may not publish to {room!r}")
        services = self.services
        from_ = ctx.user.public()
        msg = make_frame("message", data.model_dump(), room=room, sender=from_)
        offset = await services.backend.history.append(
            room, msg, size=opts.history_size, ttl=opts.history_ttl)
        await services.publish_room(room, msg, exclude=ctx.conn.id)
        await ctx.ack({"id": msg["id"], "offset": offset})

