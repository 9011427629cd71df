"""The inbound pipeline (docs/pipeline.md). Every text frame goes through, in this order:

1. frame size: aiohttp's ``max_msg_size`` (``server.max_message_size``), closes with 1009;
2. JSON decode (``protocol.parse_json``): ``INVALID_JSON``;
3. envelope (``protocol.envelope``) and the owning plugin's schema: ``INVALID_MESSAGE``,
   ``UNKNOWN_MESSAGE_TYPE``;
4. the stages here: rate limit, content length, filter, then the plugins' own stages;
5. dispatch: the type's permission (``FORBIDDEN``), then its handler.

Steps 1-3 and 5 live in ``frames.py``. Frames refused at steps 2-3, and binary frames, are
invalid: ``messages.max_invalid_frames`` of them within ``messages.invalid_frames_window``
seconds close the connection with 4501.
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING

from ..config import Config, MessagesConfig
from ..errors import CloseConnection, MessageRejected
from .filter import FilterStage
from .limits import ContentLengthStage
from .ratelimit import EventWindow, RateLimitStage
from ..plugin_api import Stage
from ..protocol import Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection

_INVALID_KEY = "core.invalid_frames"  # in conn.state, beside "core.rate_limit"


class Pipeline:
    def __init__(self, stages: list[Stage], messages: MessagesConfig) -> None:
        self.stages = stages
        self.messages = messages

    async def run(self, conn: "Connection", env: Envelope) -> Envelope | None:
        """Run every stage; None when one dropped the frame. A stage that fails unexpectedly is
        logged by name and the frame gets ``INTERNAL_ERROR``."""
        for stage in self.stages:
            try:
                result = stage.process(conn, env)
                if result is env:  # the usual answer, and no awaitable
                    continue
                if inspect.isawaitable(result):
                    result = await result
            except (MessageRejected, CloseConnection):
                raise
            except Exception:
                conn.log.exception("stage_failed", stage=getattr(stage, "name", type(stage).__name__),
                                   type=env.type)
                raise MessageRejected(ErrorCode.INTERNAL_ERROR,
                                      "internal error while handling the frame") from None
            if result is None:
                return None
            env = result
        return env

    def invalid_frame(self, conn: "Connection") -> bool:
        """Count one invalid frame of ``conn``; True when it is time to close with 4501."""
        window = conn.state.get(_INVALID_KEY)
        if window is None:
            window = conn.state[_INVALID_KEY] = EventWindow(self.messages.max_invalid_frames,
                                                            self.messages.invalid_frames_window)
        return window.hit(time.monotonic())


def build_pipeline(config: Config, extra: list[Stage] | None = None) -> Pipeline:
    own = frozenset(t for stage in extra or () for t in getattr(stage, "rate_limited_types", ()))
    stages: list[Stage] = [
        RateLimitStage(config.rate_limit, own),
        ContentLengthStage(config.messages),
        FilterStage(config.messages.filter),
    ]
    return Pipeline(stages + list(extra or ()), config.messages)
