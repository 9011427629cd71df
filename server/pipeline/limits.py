"""Content length (``messages.max_message_length``, in characters of ``data.content``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import MessagesConfig
from ..errors import MessageRejected
from ..protocol import Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection


class ContentLengthStage:
    name = "content_length"

    def __init__(self, config: MessagesConfig) -> None:
        self.max = config.max_message_length

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None:
        content = env.data.get("content")
        if isinstance(content, str) and len(content) > self.max:
            raise MessageRejected(
                ErrorCode.MESSAGE_TOO_LONG,
                f"data.content is {len(content)} characters; the limit is {self.max}")
        return env
