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
from collections import deque
from typing import TYPE_CHECKING

from ..config import RateLimitConfig, TypeRate
from ..errors import CloseConnection, MessageRejected
from ..protocol import CloseCode, Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection

# conn.state is keyed by plugin name, and a plugin name has no dot: "core." keys never collide
_STATE_KEY = "core.rate_limit"
_EPSILON = 1e-9  # float noise: a client that waits exactly retry_after finds its token


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def wait(self, now: float) -> float:
        """Seconds until a token is available; 0 when one is. A ``now`` taken before the bucket
        was made counts as its creation time."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return 0.0 if self.tokens >= 1.0 - _EPSILON else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take one token; returns 0 when allowed, else seconds until one is available."""
        wait = self.wait(now)
        if not wait:
            self.tokens = max(0.0, self.tokens - 1.0)
        return wait

    def full(self, now: float) -> bool:
        """True when the bucket has refilled: it is then the same as a new one."""
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class BucketMap:
    """Buckets by key (user id, address) that stays bounded: when it has doubled since it was
    last pruned, the buckets that refilled are dropped. That loses nothing, since a full bucket
    is what a new one would be; what stays is the keys active within one refill time."""

    _MIN_PRUNE = 1024

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}
        self._prune_at = self._MIN_PRUNE

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self._prune_at:
                self.buckets = {k: b for k, b in self.buckets.items() if not b.full(now)}
                self._prune_at = max(self._MIN_PRUNE, 2 * len(self.buckets))
            bucket = self.buckets[key] = TokenBucket(self.per_minute, self.burst)
        return bucket


class EventWindow:
    """The times of the last ``limit`` events, to tell when ``limit`` of them fell within
    ``window`` seconds. Memory is bounded by ``limit``."""

    __slots__ = ("times", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.times: deque[float] = deque(maxlen=limit)
        self.window = window

    def hit(self, now: float) -> bool:
        """Record one event; True when ``limit`` events happened within the last ``window``."""
        times = self.times
        times.append(now)
        while now - times[0] > self.window:
            times.popleft()
        return len(times) == times.maxlen

    def __len__(self) -> int:
        return len(self.times)


class _ConnLimits:
    __slots__ = ("general", "typed", "violations")

    def __init__(self, config: RateLimitConfig) -> None:
        self.general = TokenBucket(config.messages_per_minute, config.burst)
        self.typed: dict[str, TokenBucket] = {}
        self.violations = EventWindow(config.max_violations + 1, config.violation_window)

    def typed_bucket(self, type_: str, rate: TypeRate) -> TokenBucket:
        bucket = self.typed.get(type_)
        if bucket is None:
            bucket = self.typed[type_] = TokenBucket(rate.messages_per_minute, rate.burst)
        return bucket


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
            buckets: tuple[TokenBucket, ...] = (limits.typed_bucket(env.type, override),)
        else:
            buckets = (limits.general, self.users.get(conn.user.id, now))
        wait = max(b.wait(now) for b in buckets)
        if not wait:
            for bucket in buckets:
                bucket.take(now)
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
