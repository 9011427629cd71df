"""Polls in rooms, as an example Switchboard plugin.

``poll.create`` opens a poll in a room the sender is in, ``poll.vote`` votes (a user has one
vote per poll and may change it), and after each change every member of the room gets
``poll.results``. Enable it with ``plugins.enabled: [chat, poll]``; configure it under
``plugins.poll`` (see :class:`PollConfig`).

Polls and votes live in the plugin's store (``self.store``): in memory on one node, in Redis
with several, where every node sees the same polls.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from server.plugin_api import (
    BaseModel,
    Context,
    ErrorCode,
    Field,
    MessageRejected,
    Plugin,
    PluginConfig,
    handles,
)

Ctx = Context["PollConfig"]

__all__ = ["PollConfig", "PollPlugin", "PollResults"]


class PollConfig(PluginConfig):
    """The ``plugins.poll`` section of websocket.yaml."""

    max_options: int = Field(10, ge=2, le=100, description="most options a poll may have")
    max_polls: int = Field(1000, ge=1, description="open polls kept; the oldest is dropped past it")


class CreatePoll(BaseModel):
    question: str = Field(min_length=1, max_length=300)
    options: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=2)


class Vote(BaseModel):
    poll_id: str
    option: int = Field(ge=0, description="index of the chosen option")


class OptionResult(BaseModel):
    text: str
    votes: int


class PollResults(BaseModel):
    """The state of a poll, sent to its room when it opens and after every vote."""

    poll_id: str
    room: str
    question: str
    created_by: str
    options: list[OptionResult]
    total_votes: int


def _results(poll: dict[str, Any], votes: dict[str, int]) -> PollResults:
    counts = [0] * len(poll["options"])
    for option in votes.values():
        counts[option] += 1
    return PollResults(poll_id=poll["id"], room=poll["room"], question=poll["question"],
                       created_by=poll["created_by"], total_votes=len(votes),
                       options=[OptionResult(text=t, votes=n)
                                for t, n in zip(poll["options"], counts, strict=True)])


def _joined_room(ctx: Ctx, room: str | None) -> str:
    if not room:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' is required")
    if room not in ctx.conn.rooms:
        raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {room!r} first")
    return room


class PollPlugin(Plugin[PollConfig]):
    """Store keys: ``poll:<id>`` (the poll), ``votes:<id>`` (user id -> option), ``open`` (a
    stream of poll ids, oldest first, at most ``max_polls``)."""

    name = "poll"
    Config = PollConfig
    emits = {"poll.results": PollResults}

    @handles("poll.create", schema=CreatePoll)
    async def create(self, ctx: Ctx, data: CreatePoll) -> None:
        """Open a poll in ``room``; the sender gets ``ack {poll_id}``, the room ``poll.results``."""
        room = _joined_room(ctx, ctx.room)
        if len(data.options) > self.config.max_options:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.options: at most {self.config.max_options} options")
        poll = {"id": uuid.uuid4().hex, "room": room, "question": data.question,
                "options": data.options, "created_by": ctx.user.id}
        await self._open(poll)
        ctx.log.info("poll_created", poll_id=poll["id"], room=room, options=len(data.options))
        await ctx.ack({"poll_id": poll["id"]})
        await ctx.send_to_room(room, "poll.results", _results(poll, {}), exclude_self=False)

    @handles("poll.vote", schema=Vote)
    async def vote(self, ctx: Ctx, data: Vote) -> None:
        """Vote in a poll of a room you are in; voting again changes your vote."""
        poll = await self.store.get(f"poll:{data.poll_id}")
        if poll is None:
            raise MessageRejected(ErrorCode.NOT_FOUND, f"no open poll {data.poll_id!r}")
        _joined_room(ctx, poll["room"])
        if data.option >= len(poll["options"]):
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.option: must be below {len(poll['options'])}, got {data.option}")
        await self.store.hash_set(f"votes:{poll['id']}", ctx.user.id, data.option)
        votes = await self.store.hash_all(f"votes:{poll['id']}")
        await ctx.ack({"poll_id": poll["id"]})
        await ctx.send_to_room(poll["room"], "poll.results", _results(poll, votes),
                               exclude_self=False, sender=None)

    async def _open(self, poll: dict[str, Any]) -> None:
        """Keep ``poll``; past ``max_polls`` open ones, the oldest goes."""
        store, keep = self.store, self.config.max_polls
        opened = await store.stream_read("open", limit=keep + 1)
        for _, old in opened[:max(len(opened) + 1 - keep, 0)]:
            await store.delete(f"poll:{old}")
            await store.delete(f"votes:{old}")
        await store.set(f"poll:{poll['id']}", poll)
        await store.stream_add("open", poll["id"], maxlen=keep)
