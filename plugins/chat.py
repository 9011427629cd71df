"""Chat: rooms, room and private messages, broadcast, history and recovery, the inbox.

The frames are described in docs/protocol.md. Delivery itself (history, inbox, fan-out) is the
node's (``NodeAPI.post_to_room``, ``send_private``), which the HTTP API shares; this plugin
holds the rules of the frames (who may send what where) and the replies.

Replays (``joined.missed``, ``history``, the inbox on connect) are cut to half a connection's
outbound queue (``server.write_buffer_size`` bytes, ``server.max_queued_messages`` frames), so
that catching up never closes a client as a slow consumer; ``has_more`` and the inbox's
next-batch-on-ack bring the rest.
"""

from __future__ import annotations

from typing import Any


from server.plugin_api import (BaseModel, ConfigDict, Context, ErrorCode, Field, MessageRejected,
                               Plugin, PluginConfig, handles)

_MAX_OFFSET = 200  # characters; offsets are far shorter


class InboxConfig(PluginConfig):
    """The ``inbox`` section of websocket.yaml: private messages to a user with no open
    connection wait in their inbox (docs/configuration.md)."""

    # unknown keys are the config loader's warnings, as for the core's sections
    model_config = ConfigDict(extra="ignore")
    size: int = Field(100, gt=0, description="messages kept per user; the oldest go first")
    ttl: float = Field(604800.0, gt=0, description="seconds a message waits")


class JoinData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    since: str | None = Field(None, min_length=1, max_length=_MAX_OFFSET,
                              description="offset of the last room message seen; the ones after "
                                          "it come in joined.missed")


class LeaveData(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MessageData(BaseModel):
    """A room or private message: ``content`` plus any fields of the application's own."""

    model_config = ConfigDict(extra="allow")
    content: str = Field(description="the text of the message")


class BroadcastData(BaseModel):
    """Free fields, delivered as sent."""

    model_config = ConfigDict(extra="allow")


class HistoryData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    since: str | None = Field(None, min_length=1, max_length=_MAX_OFFSET,
                              description="offset: the messages after it; none: the latest ones")
    limit: int = Field(50, ge=1, le=1000, description="most messages in the reply")


class InboxAckData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    offset: str = Field(min_length=1, max_length=_MAX_OFFSET,
                        description="inbox offset of the last private message handled")


class Joined(BaseModel):
    """Answers ``join``: the room's member count and top ``offset``; with ``since``, the room
    messages missed, ``recovered`` false when some of them are no longer kept."""

    room: str
    members_count: int
    recovered: bool
    missed: list[dict[str, Any]]
    offset: str
    has_more: bool


class Left(BaseModel):
    """Answers ``leave``; also sent, with ``reason: deleted``, when an operator deletes a room."""

    room: str
    members_count: int
    reason: str | None = None


class HistoryReply(BaseModel):
    """Answers ``history``: a page of a room's kept messages (``room``), or of the private
    conversation with a user (``to``), oldest first."""

    room: str | None = None
    to: str | None = None
    messages: list[dict[str, Any]]
    offset: str
    recovered: bool
    has_more: bool


def _need_room(ctx: Context[InboxConfig]) -> str:
    if not ctx.room:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' is required")
    return ctx.room


def _has_more(messages: list[dict[str, Any]], top: str) -> bool:
    """Newer kept messages follow the page (the newest kept is always the top)."""
    return bool(messages) and messages[-1]["offset"] != top


class ChatPlugin(Plugin[InboxConfig]):
    name = "chat"
    Config = InboxConfig
    section = "inbox"
    emits = {"joined": Joined, "left": Left, "message": MessageData, "broadcast": BroadcastData,
             "history": HistoryReply, "system_message": None}

    # --- rooms ----------------------------------------------------------------------------
    @handles("join", schema=JoinData,
             description="join a room; with data.since, get the room messages missed since then")
    async def join(self, ctx: Context[InboxConfig], data: JoinData) -> None:
        room = _need_room(ctx)
        count = await ctx.join(room)
        if data.since is None:
            missed: list[dict[str, Any]] = []
            recovered, top = True, await self.node.history_top(room)
        else:
            page = await self.node.history(room, data.since,
                                           limit=max(ctx.room_options(room).history_size, 1))
            missed = page.messages[:ctx.replay_fit(page.messages)]
            recovered, top = page.recovered, page.offset
        await ctx.reply("joined", {"room": room, "members_count": count, "recovered": recovered,
                                   "missed": missed, "offset": top,
                                   "has_more": _has_more(missed, top)}, room=room)

    @handles("leave", schema=LeaveData, description="leave a room")
    async def leave(self, ctx: Context[InboxConfig], data: LeaveData) -> None:
        room = _need_room(ctx)
        count = await ctx.leave(room)
        await ctx.reply("left", {"room": room, "members_count": count}, room=room)

    @handles("history", schema=HistoryData,
             description="a page of a joined room's kept messages (room), or of your private "
                         "conversation with a user (to): the latest, or those after since")
    async def history(self, ctx: Context[InboxConfig], data: HistoryData) -> None:
        room, to = ctx.room, ctx.to
        if to is not None:
            if room is not None:
                raise MessageRejected(ErrorCode.INVALID_MESSAGE, "give 'room' or 'to', not both")
            page = await self.node.conversation(ctx.user.id, to, data.since, limit=data.limit)
            where: dict[str, str] = {"to": to}
        else:
            room = _need_room(ctx)
            if room not in ctx.conn.rooms:
                raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {room!r} to read its history")
            page = await self.node.history(room, data.since, limit=data.limit)
            where = {"room": room}
        messages = page.messages
        if data.since is None:  # the latest page: what does not fit goes from its old end
            messages = messages[len(messages) - ctx.replay_fit(messages[::-1]):]
        else:
            messages = messages[:ctx.replay_fit(messages)]
        await ctx.reply("history", {**where, "messages": messages, "offset": page.offset,
                                    "recovered": page.recovered,
                                    "has_more": _has_more(messages, page.offset)}, **where)

    # --- messages -------------------------------------------------------------------------
    @handles("message", schema=MessageData,
             description="a message to a joined room's members (room), or to a user (to)")
    async def message(self, ctx: Context[InboxConfig], data: MessageData) -> None:
        sender = ctx.user.public()
        # data.model_dump() built directly, five times cheaper: MessageData declares content only
        payload = {"content": data.content, **(data.model_extra or {})}
        room, to = ctx.room, ctx.to
        if to is not None:
            if room is not None:
                raise MessageRejected(ErrorCode.INVALID_MESSAGE, "give 'room' or 'to', not both")
            cfg = self.config
            sent = await self.node.send_private(to, payload, sender=sender, exclude=ctx.conn.id,
                                                inbox_size=cfg.size, inbox_ttl=cfg.ttl)
        else:
            if room is None:
                raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' or 'to' is required")
            if room not in ctx.conn.rooms:
                raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {room!r} before sending to it")
            if not ctx.room_options(room).client_publish:
                raise MessageRejected(ErrorCode.FORBIDDEN, f"clients may not publish to {room!r}")
            sent = await self.node.post_to_room(room, "message", payload, sender=sender,
                                                    exclude=ctx.conn.id)
        await ctx.ack({"id": sent["id"], "offset": sent.get("offset")})

    @handles("broadcast", schema=BroadcastData,
             description="to every connection; for roles in permissions.broadcast")
    async def broadcast(self, ctx: Context[InboxConfig], data: BroadcastData) -> None:
        node = self.node
        if not node.permitted(ctx.user, "broadcast"):
            raise MessageRejected(ErrorCode.FORBIDDEN, "your roles may not broadcast")
        sent = await node.broadcast("broadcast", data.model_dump(), exclude=ctx.conn.id,
                                    exclude_user=None if node.echo_to_sender else ctx.user.id,
                                    sender=ctx.user.public())
        await ctx.ack({"id": sent["id"]})

    # --- inbox ----------------------------------------------------------------------------
    async def on_connect(self, ctx: Context[InboxConfig]) -> None:
        await self._deliver_inbox(ctx, None)

    @handles("inbox.ack", schema=InboxAckData,
             description="your inbox is read up to data.offset: those messages stop coming")
    async def inbox_ack(self, ctx: Context[InboxConfig], data: InboxAckData) -> None:
        await self.node.inbox_ack(ctx.user.id, data.offset)
        await ctx.ack({"offset": data.offset})
        cursor = ctx.state.pop("inbox_cursor", None)
        if cursor is not None:
            await self._deliver_inbox(ctx, cursor)

    async def _deliver_inbox(self, ctx: Context[InboxConfig], since: str | None) -> None:
        """Send the waiting private messages after ``since``, marked ``inbox: true``, as many as
        fit the budget; the next ``inbox.ack`` of this connection brings the next ones."""
        node = self.node
        pending = await node.inbox(ctx.user.id, since, limit=self.config.size)
        if not pending:
            return
        count = ctx.replay_fit(pending)
        for message in pending[:count]:
            node.send_frame(ctx.conn, {**message, "inbox": True})
        if count < len(pending):
            ctx.state["inbox_cursor"] = pending[count - 1]["offset"]
        ctx.log.info("inbox_delivered", count=count, waiting=len(pending) - count)
