"""Token buckets per connection and per user, with per-type overrides (``rate_limit``).

A frame of a type listed in ``per_type`` takes a token from that type's own bucket on its
connection, and nothing else. A type a plugin stage limits itself (one in the stage's
``rate_limited_types``, e.g. typing) takes nothing here unless ``per_type`` lists it. Any other
frame takes one from its connection's bucket and one from its user's bucket (shared by all of
the user's connections on this node), and only when both have one. A refusal is ``RATE_LIMITED``
with ``retry_after``, the seconds until every bucket involved holds a token again; more than
``max_violations`` refusals within ``violation_window`` seconds close the connection with 4013.
Each refusal answers exactly one frame and the close bounds how many there can be, so the error
frames need no limit of their own. With ``dry_run`` nothing is refused: every frame that would
have been is logged.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from ..config import RateLimitConfig, TypeRate
from ..buckets import BucketMap, EventWindow, TokenBucket
from ..errors import CloseConnection, MessageRejected
from ..protocol import CloseCode, Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection

# conn.state is keyed by plugin name, and a plugin name has no dot: "core." keys never collide
_STATE_KEY = "core.rate_limit"


class _ConnLimits:
    __slots__ = ("general", "typed", "_violations", "_config")

    def __init__(self, config: RateLimitConfig) -> None:
        self.general = TokenBucket(config.messages_per_minute, config.burst)
        # made at the first per-type frame and the first refusal: most connections see
        # neither, and an empty dict and window cost ~0.9 KiB on every connection
        self.typed: dict[str, TokenBucket] | None = None
        self._violations: EventWindow | None = None
        self._config = config

    def typed_bucket(self, type_: str, rate: TypeRate) -> TokenBucket:
        if self.typed is None:
            self.typed = {}
        bucket = self.typed.get(type_)
        if bucket is None:
            bucket = self.typed[type_] = TokenBucket(rate.messages_per_minute, rate.burst)
        return bucket

    @property
    def violations(self) -> EventWindow:
        if self._violations is None:
            cfg = self._config
            self._violations = EventWindow(cfg.max_violations + 1, cfg.violation_window)
        return self._violations


class RateLimitStage:
    name = "rate_limit"

    def __init__(self, config: RateLimitConfig, own_limits: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.users = BucketMap(config.user_messages_per_minute, config.user_burst)
        #: types a plugin stage limits itself (its ``rate_limited_types``), unless in ``per_type``
        self.own_limits = own_limits

    def _limits(self, conn: "Connection") -> _ConnLimits:
        limits = conn.state.get(_STATE_KEY)
        if limits is None:
            limits = conn.state[_STATE_KEY] = _ConnLimits(self.config)
        return limits

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None:
        cfg = self.config
        if not cfg.enabled:
            return env
        now = time.monotonic()
        limits = self._limits(conn)
        override = cfg.per_type.get(env.type)
        if override is None and env.type in self.own_limits:
            return env
        if override is not None:
            typed = limits.typed_bucket(env.type, override)
            wait = typed.take(now)
        else:
            general, user = limits.general, self.users.get(conn.user.id, now)
            wait = max(general.wait(now), user.wait(now))
            if not wait:
                general.spend()
                user.spend()
        if not wait:
            return env
        retry_after = math.ceil(wait * 1000) / 1000  # never tell a client to come back too early
        close = limits.violations.hit(now)
        if cfg.dry_run:
            conn.log.info("rate_limit_exceeded", type=env.type, dry_run=True, retry_after=retry_after,
                          violations=len(limits.violations), would_close=close)
            return env
        if close:
            conn.log.warning("rate_limit_close", type=env.type, violations=len(limits.violations))
            raise CloseConnection(CloseCode.RATE_LIMITED, "rate limit: too many violations")
        conn.log.info("rate_limited", type=env.type, retry_after=retry_after,
                      violations=len(limits.violations))
        raise MessageRejected(ErrorCode.RATE_LIMITED, f"rate limit exceeded; retry in {retry_after:g}s",
                              retry_after=retry_after)
