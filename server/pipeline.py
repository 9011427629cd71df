"""The inbound pipeline after decode and schema validation: rate limit, content length,
filter, then plugin stages, then dispatch (in ``ws.py``)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .config import Config
from .middleware.filter import FilterStage
from .middleware.limits import ContentLengthStage
from .middleware.ratelimit import RateLimitStage
from .plugin_api import Stage
from .protocol import Envelope

if TYPE_CHECKING:
    from .connection import Connection


class Pipeline:
    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self._async = [inspect.iscoroutinefunction(s.process) for s in stages]

    async def run(self, conn: "Connection", env: Envelope) -> Envelope | None:
        result: Any = env
        for stage, is_async in zip(self.stages, self._async):
            result = stage.process(conn, result)
            if is_async:
                result = await result
            if result is None:
                return None
        return result


def build_pipeline(config: Config, extra: list[Stage] | None = None) -> Pipeline:
    stages: list[Stage] = [
        RateLimitStage(config.rate_limit),
        ContentLengthStage(config.messages),
        FilterStage(config.messages.filter),
    ]
    return Pipeline(stages + list(extra or ()))
