"""Content filter (``messages.filter``): a word list and regular expressions, compiled into one
pattern. ``reject`` refuses the frame with MESSAGE_FILTERED; ``mask`` delivers it with every
match replaced by ``mask_char``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..config import FilterConfig
from ..errors import MessageRejected
from ..protocol import Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection


def compile_filter(config: FilterConfig) -> re.Pattern[str] | None:
    parts = [rf"\b{re.escape(w)}\b" for w in config.words if w]
    parts += [f"(?:{p})" for p in config.patterns if p]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class FilterStage:
    name = "filter"

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self.pattern = compile_filter(config) if config.enabled else None

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None:
        pattern = self.pattern
        content = env.data.get("content")
        if pattern is None or not isinstance(content, str):
            return env
        if self.config.action == "reject":
            if pattern.search(content):
                conn.log.info("message_filtered", type=env.type)
                raise MessageRejected(ErrorCode.MESSAGE_FILTERED, "the message contains filtered content")
            return env
        char = self.config.mask_char
        masked = pattern.sub(lambda m: char * len(m.group(0)), content)
        if masked != content:
            env.data["content"] = masked
            _set_content(env.payload, masked)
        return env


def _set_content(payload: Any, value: str) -> None:
    if isinstance(payload, dict):
        payload["content"] = value
    elif payload is not None and hasattr(payload, "content"):
        object.__setattr__(payload, "content", value)
