"""What the route groups share: the names a path or body may carry, paging, a room that must
exist."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..backends.base import RoomInfo
from ..errors import MessageRejected
from ..node import Node
from ..rooms import MAX_NAME_LENGTH, check_name
from .errors import not_found


def _name(value: str) -> str:
    try:
        check_name("name", value)
    except MessageRejected:
        raise ValueError(f"must be 1-{MAX_NAME_LENGTH} printable characters without leading or "
                         "trailing spaces") from None
    return value


#: a room name or a user id
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_name)]
#: a message type, as plugins name them
TypeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int | None = Field(None, ge=1, le=1_000_000, description=(
        "items to return: api.page_size when absent, at most api.max_page_size"))
    offset: int = Field(0, ge=0, le=1_000_000_000, description="items to skip")


class SinceQuery(Page):
    since: str | None = Field(None, max_length=200,
                              description="offset of the last item already seen")


def page_limit(node: Node, limit: int | None) -> int:
    """The items a page holds: ``limit``, else ``api.page_size``; at most ``api.max_page_size``."""
    api = node.config.api
    return min(limit or api.page_size, api.max_page_size)


async def existing_room(node: Node, room: str) -> RoomInfo:
    """``room``'s info; 404 when there is no such room."""
    info = await node.backend.rooms.get(room)
    if info is None:
        raise not_found(f"room {room!r}")
    return info
