"""Token buckets and event windows: the counting behind every rate limit and cap (the
pipeline's rate limit, the upgrade's connect rate, a plugin's own limits). A leaf module."""

from __future__ import annotations

import time
from collections import deque

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
            self.spend()
        return wait

    def spend(self) -> None:
        """Take the token that ``wait`` has just found."""
        self.tokens = max(0.0, self.tokens - 1.0)

    def full(self, now: float) -> bool:
        """True when the bucket has refilled: it is then the same as a new one."""
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class BucketMap:
    """Buckets by key (user id, address) that stays bounded: when it has doubled since it was
    last pruned, and at the first call a minute (or a refill time, when longer) after the last
    prune, the buckets that refilled are dropped. That loses nothing, since a full bucket is
    what a new one would be; what stays is the keys active within one refill time, so the map
    shrinks again after a burst of users instead of keeping its peak."""

    _MIN_PRUNE = 1024
    _PRUNE_EVERY = 60.0  # seconds

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}
        self._prune_at = self._MIN_PRUNE
        self._prune_every = max(self._PRUNE_EVERY, 60.0 * burst / per_minute)
        self._pruned = time.monotonic()

    def get(self, key: str, now: float) -> TokenBucket:
        if now - self._pruned >= self._prune_every:
            self._prune(now)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self._prune_at:
                self._prune(now)
            bucket = self.buckets[key] = TokenBucket(self.per_minute, self.burst)
        return bucket

    def _prune(self, now: float) -> None:
        self.buckets = {k: b for k, b in self.buckets.items() if not b.full(now)}
        self._prune_at = max(self._MIN_PRUNE, 2 * len(self.buckets))
        self._pruned = now


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
