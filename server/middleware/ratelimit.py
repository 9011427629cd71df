"""Token buckets per connection and per user, with per-type overrides (``rate_limit``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from ..config import RateLimitConfig
from ..errors import CloseConnection, MessageRejected
from ..protocol import CloseCode, Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection

log = structlog.get_logger(__name__)


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, now: float) -> float:
        """Take one token; returns 0 when allowed, else seconds until one is available."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class RateLimitStage:
    name = "rate_limit"

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._users: dict[str, TokenBucket] = {}
        self._calls = 0

    def _bucket(self, conn: "Connection", key: str, per_minute: int, burst: int) -> TokenBucket:
        bucket = conn.state.get(key)
        if bucket is None:
            bucket = conn.state[key] = TokenBucket(per_minute, burst)
        return bucket

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None:
        cfg = self.config
        if not cfg.enabled:
            return env
        now = time.monotonic()
        override = cfg.per_type.get(env.type)
        if override is not None:
            wait = self._bucket(conn, f"rl:{env.type}", override.messages_per_minute,
                                override.burst).take(now)
        else:
            wait = self._bucket(conn, "rl", cfg.messages_per_minute, cfg.burst).take(now)
            if not wait:
                wait = self._user_bucket(conn.user.id, now).take(now)
        if not wait:
            return env
        if cfg.dry_run:
            conn.log.info("rate_limit_exceeded", type=env.type, dry_run=True, retry_after=round(wait, 3))
            return env
        self._violation(conn, now)
        raise MessageRejected(ErrorCode.RATE_LIMITED,
                              f"rate limit exceeded; retry in {wait:.2f}s", retry_after=wait)

    def _user_bucket(self, user_id: str, now: float) -> TokenBucket:
        cfg = self.config
        bucket = self._users.get(user_id)
        if bucket is None:
            self._calls += 1
            if self._calls % 1024 == 0:  # forget users whose buckets refilled
                self._users = {u: b for u, b in self._users.items() if not b.full(now)}
            bucket = self._users[user_id] = TokenBucket(cfg.user_messages_per_minute, cfg.user_burst)
        return bucket

    def _violation(self, conn: "Connection", now: float) -> None:
        cfg = self.config
        window: list[float] = conn.state.setdefault("rl:violations", [])
        window.append(now)
        while window and now - window[0] > cfg.violation_window:
            window.pop(0)
        conn.log.info("rate_limited", violations=len(window))
        if len(window) > cfg.max_violations:
            raise CloseConnection(CloseCode.RATE_LIMITED, "rate limit: too many violations")
