"""Messages as the bearer: ``POST /api/messages`` takes the frame path of a ``message`` frame
(``frames.handle_frame``: the pipeline's rate limit, length and filter, the type's permission,
the handler) on a connection without a socket (``sessions.HttpConnection``), in the rooms the
bearer's connections are in, or, for a service (a role in
``permissions.post_without_connection``, or an API key), in the room it names if that exists;
``GET /api/messages/inbox`` reads the bearer's unread private messages, and
``GET /api/messages/conversations[/{user_id}]`` their private conversations."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import FieldError
from ..errors import MessageRejected
from ..frames import handle_frame
from ..identity import User
from ..keys import NODE, PIPELINE, REGISTRY
from ..protocol import CloseCode, ErrorCode, new_id
from .common import Name, SinceQuery, page_limit
from .errors import ApiError, not_found, rejected
from .routes import Caller, Routes
from .sessions import HTTP_SESSIONS, HttpConnection

routes = Routes()


class MessagePost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: Name | None = Field(None, description="a room the bearer is in")
    to: Name | None = Field(None, description="a user id: a private message")
    content: str = Field(description="the text (at most messages.max_message_length)")
    data: dict[str, Any] = Field(default_factory=dict, description="extra fields of data")

    @model_validator(mode="after")
    def _one_target(self) -> "MessagePost":
        if (self.room is None) == (self.to is None):
            raise FieldError("room", "give exactly one of room and to")
        return self


def _masked_fields(schema: dict[str, Any]) -> None:
    schema.setdefault("properties", {}).update({
        "content": {"type": "string", "description": "only when the filter masked the text: "
                                                     "the text as the others got it"},
        "filtered": {"type": "boolean", "description": "true when the filter masked the text "
                                                       "(absent otherwise)"}})


class MessageSent(BaseModel):
    """The message's ack. When the content filter masked the text, ``content`` (as delivered)
    and ``filtered: true`` come with it."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_masked_fields)
    id: str | None = Field(None, description="the message's id; null when a stage dropped it")
    offset: str | None = Field(None, description="its offset in the room's history, or in the "
                                                 "private conversation")


#: who an API key's message is from (an API key is no user: it posts as this one, with the
#: roles of api.admin_roles)
API_KEY_SENDER = "api_key"


@routes.post("/api/messages", summary="Send a message as the bearer, the way a message frame "
             "goes (permissions, rate limit, length, filter); a service (a role in "
             "permissions.post_without_connection, or X-API-Key) needs no open connection",
             access="user", body=MessagePost, response=MessageSent,
             errors=(403, 404, 409, 422, 429), tags=("messages",))
async def message_post(request: web.Request, caller: Caller, body: MessagePost) -> MessageSent:
    node = request.app[NODE]
    cfg = node.config
    user = caller.user or User(id=API_KEY_SENDER, username=API_KEY_SENDER,
                               roles=tuple(cfg.api.admin_roles))
    rooms = await node.backend.rooms.user_rooms(user.id)
    if body.room is not None and body.room not in rooms and (
            caller.user is None or node.permitted(user, "post_without_connection")):
        # a service: any room that exists, without a socket in it
        if await node.backend.rooms.get(body.room) is None:
            raise not_found(f"room {body.room!r}")
        rooms = {*rooms, body.room}
    state = request.app[HTTP_SESSIONS].state(user.id, node.config)
    conn = HttpConnection(user, request, state, rooms)
    node.stats.messages_in += 1
    frame_id = new_id()
    frame = {"type": "message", "id": frame_id, "room": body.room, "to": body.to,
             "data": {**body.data, "content": body.content}}
    await handle_frame(node, request.app[REGISTRY], request.app[PIPELINE], conn,
                       orjson.dumps(frame).decode())
    reply = conn.reply(frame_id)
    if reply is None:
        if conn.close_code == CloseCode.RATE_LIMITED:
            raise ApiError(429, ErrorCode.RATE_LIMITED, "rate limit: too many violations")
        return MessageSent(id=None, offset=None)
    data = reply.get("data") or {}
    if reply["type"] == "error":
        raise rejected(MessageRejected(data.get("code", ErrorCode.INTERNAL_ERROR),
                                       data.get("message", ""),
                                       retry_after=data.get("retry_after")))
    return MessageSent.model_validate(data)


class Inbox(BaseModel):
    messages: list[dict[str, Any]]


@routes.get("/api/messages/inbox", summary="The bearer's unread private messages, oldest first",
            access="bearer", query=SinceQuery, response=Inbox, tags=("messages",))
async def inbox(request: web.Request, caller: Caller, query: SinceQuery) -> Inbox:
    node = request.app[NODE]
    messages = await node.backend.inbox.fetch(caller.need_user().id, query.since,
                                              limit=page_limit(node, query.limit))
    return Inbox(messages=messages)


#: most inbox messages read to count a user's unread ones (the inbox holds at most inbox.size)
UNREAD_SCAN = 100_000


class Conversation(BaseModel):
    user_id: str = Field(description="the other user (your own id for notes to yourself)")
    username: str | None = Field(description="their username, when known: from their last "
                                             "message, or from their presence while online")
    last_message: dict[str, Any] = Field(description="the latest message, either way, as kept")
    unread: int = Field(description="messages from them still in your inbox (not yet "
                                    "acknowledged with inbox.ack)")
    updated_at: float = Field(description="Unix seconds of the latest message")


class ConversationList(BaseModel):
    conversations: list[Conversation]


class ConversationLimit(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int | None = Field(None, ge=1, le=1_000_000, description=(
        "conversations to return: api.page_size when absent, at most api.max_page_size"))


@routes.get("/api/messages/conversations", summary="The bearer's private conversations, the "
            "most recent first, each with its last message and unread count", access="bearer",
            query=ConversationLimit, response=ConversationList, tags=("messages",))
async def conversations(request: web.Request, caller: Caller,
                        query: ConversationLimit) -> ConversationList:
    node = request.app[NODE]
    me = caller.need_user().id
    entries = await node.conversations(me, limit=page_limit(node, query.limit))
    unread: dict[str, int] = {}
    for message in await node.backend.inbox.fetch(me, None, limit=UNREAD_SCAN):
        from_id = str((message.get("from") or {}).get("id"))
        unread[from_id] = unread.get(from_id, 0) + 1
    names = {p.user_id: p.username for p in await node.backend.presence.snapshot(
        [e.peer for e in entries])}
    out = []
    for entry in entries:
        sender = entry.last_message.get("from") or {}
        name = sender.get("username") if sender.get("id") == entry.peer else names.get(entry.peer)
        out.append(Conversation(user_id=entry.peer, username=name, last_message=entry.last_message,
                                unread=unread.get(entry.peer, 0), updated_at=entry.updated))
    return ConversationList(conversations=out)


class ConversationPage(BaseModel):
    user_id: str = Field(description="the other user")
    messages: list[dict[str, Any]] = Field(description="oldest first")
    recovered: bool = Field(description="false when messages after `since` are gone")
    offset: str = Field(description="the conversation's latest offset")
    has_more: bool = Field(description="newer messages follow this page (ask again with the "
                                       "last one's offset as since)")


@routes.get("/api/messages/conversations/{user_id}", summary="A page of the bearer's private "
            "conversation with a user, oldest first: the latest, or those after `since`",
            access="bearer", query=SinceQuery, response=ConversationPage, errors=(400,),
            tags=("messages",))
async def conversation(request: web.Request, caller: Caller,
                       query: SinceQuery) -> ConversationPage:
    node = request.app[NODE]
    peer = request.match_info["user_id"]
    try:
        page = await node.conversation(caller.need_user().id, peer, query.since,
                                       limit=page_limit(node, query.limit))
    except MessageRejected as exc:
        raise rejected(exc) from None
    messages = page.messages
    return ConversationPage(user_id=peer, messages=messages, recovered=page.recovered,
                            offset=page.offset,
                            has_more=bool(messages) and messages[-1]["offset"] != page.offset)
