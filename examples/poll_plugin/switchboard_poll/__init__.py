"""Polls in rooms, as an example Switchboard plugin.

``poll.create`` opens a poll in a room the sender is in, ``poll.vote`` votes (a user has one
vote per poll and may change it), and after each change every member of the room gets
``poll.results``. Enable it with ``plugins.enabled: [chat, poll]``; configure it under
``plugins.poll`` (see :class:`PollConfig`).

Polls live in this node's memory and are gone on restart: with several nodes behind Redis, a
real plugin would keep them in a store every node shares.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
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


@dataclass
class Poll:
    id: str
    room: str
    question: str
    options: list[str]
    created_by: str
    votes: dict[str, int] = field(default_factory=dict)  # user id -> option index

    def results(self) -> PollResults:
        counts = [0] * len(self.options)
        for option in self.votes.values():
            counts[option] += 1
        return PollResults(poll_id=self.id, room=self.room, question=self.question,
                           created_by=self.created_by, total_votes=len(self.votes),
                           options=[OptionResult(text=t, votes=n) for t, n in zip(self.options, counts, strict=True)])


def _joined_room(ctx: Context, room: str | None) -> str:
    if not room:
        raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'room' is required")
    if room not in ctx.conn.rooms:
        raise MessageRejected(ErrorCode.NOT_IN_ROOM, f"join {room!r} first")
    return room


class PollPlugin(Plugin):
    name = "poll"
    Config = PollConfig
    emits = {"poll.results": PollResults}
    config: PollConfig

    def __init__(self, config: PollConfig, node: Any) -> None:
        super().__init__(config, node)
        self.polls: dict[str, Poll] = {}

    @handles("poll.create", schema=CreatePoll)
    async def create(self, ctx: Context, data: CreatePoll) -> None:
        """Open a poll in ``room``; the sender gets ``ack {poll_id}``, the room ``poll.results``."""
        room = _joined_room(ctx, ctx.room)
        if len(data.options) > self.config.max_options:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.options: at most {self.config.max_options} options")
        poll = Poll(uuid.uuid4().hex, room, data.question, data.options, ctx.user.id)
        self.polls[poll.id] = poll
        if len(self.polls) > self.config.max_polls:
            del self.polls[next(iter(self.polls))]
        ctx.log.info("poll_created", poll_id=poll.id, room=room, options=len(poll.options))
        await ctx.ack({"poll_id": poll.id})
        await ctx.send_to_room(room, "poll.results", poll.results(), exclude_self=False)

    @handles("poll.vote", schema=Vote)
    async def vote(self, ctx: Context, data: Vote) -> None:
        """Vote in a poll of a room you are in; voting again changes your vote."""
        poll = self.polls.get(data.poll_id)
        if poll is None:
            raise MessageRejected(ErrorCode.NOT_FOUND, f"no open poll {data.poll_id!r}")
        _joined_room(ctx, poll.room)
        if data.option >= len(poll.options):
            raise MessageRejected(ErrorCode.INVALID_MESSAGE,
                                  f"data.option: must be below {len(poll.options)}, got {data.option}")
        poll.votes[ctx.user.id] = data.option
        await ctx.ack({"poll_id": poll.id})
        await ctx.send_to_room(poll.room, "poll.results", poll.results(), exclude_self=False,
                               sender=None)
