"""Per-process rate limits: requests and tokens per minute, as token buckets.

A bucket refills continuously at ``rate_per_min / 60`` units per second up to ``capacity``
(default: 10 seconds' worth, so a fresh process cannot fire a whole minute's budget at
once). A request larger than the capacity waits for a full bucket and then goes into debt,
so one big prompt is never blocked forever. Limiters are shared per process and endpoint
(:func:`shared_limiter`), so every client of the same model in a Spark/Ray worker draws
from one budget. ``clock`` and ``sleep`` are injectable for tests.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

BURST_SECONDS = 10.0


class TokenBucket:
    """A thread-safe token bucket measured in units per minute."""

    def __init__(self, rate_per_min: float, capacity: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_per_min <= 0:
            raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
        self.rate_per_s = rate_per_min / 60.0
        self.capacity = float(capacity if capacity is not None else max(1.0, self.rate_per_s * BURST_SECONDS))
        self._clock = clock
        self._sleep = sleep
        self._level = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` could be taken (0 if now)."""
        with self._lock:
            self._refill()
            need = min(amount, self.capacity)
            return max(0.0, (need - self._level) / self.rate_per_s)

    def acquire(self, amount: float = 1.0) -> float:
        """Block until ``amount`` units are available, take them, return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                need = min(amount, self.capacity)
                if self._level >= need:
                    self._level -= amount  # may go negative for amount > capacity (debt)
                    self.waited_s += waited
                    return waited
                wait = (need - self._level) / self.rate_per_s
            self._sleep(wait)
            waited += wait

    def adjust(self, delta: float) -> None:
        """Correct an estimate after the fact: positive ``delta`` takes more, negative gives back."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level - delta)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits; either may be ``None`` (unlimited)."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.requests = TokenBucket(requests_per_minute, clock=clock, sleep=sleep) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, clock=clock, sleep=sleep) if tokens_per_minute else None

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def acquire(self, est_tokens: int = 0) -> float:
        """Wait for one request slot and ``est_tokens`` tokens; returns the seconds waited."""
        waited = 0.0
        if self.requests is not None:
            waited += self.requests.acquire(1.0)
        if self.tokens is not None and est_tokens > 0:
            waited += self.tokens.acquire(float(est_tokens))
        return waited

    def settle(self, est_tokens: int, actual_tokens: int) -> None:
        """After a call: charge (or refund) the difference between estimated and real tokens."""
        if self.tokens is not None and actual_tokens != est_tokens:
            self.tokens.adjust(float(actual_tokens - est_tokens))


_SHARED: dict[tuple, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: tuple, requests_per_minute: float | None, tokens_per_minute: float | None) -> RateLimiter:
    """The process-wide limiter for ``key`` (e.g. backend, model, base_url, limits)."""
    full = (*key, requests_per_minute, tokens_per_minute)
    with _SHARED_LOCK:
        lim = _SHARED.get(full)
        if lim is None:
            lim = RateLimiter(requests_per_minute, tokens_per_minute)
            _SHARED[full] = lim
        return lim
