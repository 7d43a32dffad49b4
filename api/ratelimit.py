"""Token buckets per caller, in process: what keeps one storefront visitor or one events key
from taking the API down.

Each key (a storefront key and client address, or an events key) owns a bucket of `burst`
tokens refilled at `rate_per_s`; a request takes its cost or is refused with the seconds until
it could pass (the `Retry-After` of a 429). The buckets live in each API process, so N worker
processes admit up to N times the rate: the bound is per process, which is what protects it.
Routes and the auth check run on the event loop thread, so no lock is needed.

>>> clock = iter([0.0, 0.0, 0.0, 0.5]).__next__
>>> limiter = RateLimiter(rate_per_s=2.0, burst=2.0, clock=clock)
>>> limiter.take("k"), limiter.take("k"), limiter.take("k"), limiter.take("k")
(0.0, 0.0, 0.5, 0.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RateLimiter:
    """`take(key, cost)`: 0.0 when admitted, else the seconds to wait (nothing is taken)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s, self.burst, self.max_keys = rate_per_s, burst, max_keys
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: Hashable, cost: float = 1.0) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens >= cost:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (min(cost, self.burst) - tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (they hold nothing a fresh one would not)."""
        self._buckets = {
            k: (t, at)
            for k, (t, at) in self._buckets.items()
            if t + (now - at) * self.rate_per_s < self.burst
        }
        if len(self._buckets) >= self.max_keys:  # all busy: bounded memory wins
            self._buckets.clear()


__all__ = ["RateLimiter"]
