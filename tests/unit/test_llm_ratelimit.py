"""Token-bucket rate limiter with a fake clock (no real waiting)."""
from __future__ import annotations

import pytest

from pld_spark.llm.ratelimit import RateLimiter, TokenBucket, shared_limiter


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.slept.append(s)
        self.t += s


def test_bucket_allows_burst_then_paces_at_rate():
    c = FakeClock()
    b = TokenBucket(60, capacity=3, clock=c.now, sleep=c.sleep)  # 1 per second, burst 3
    for _ in range(3):
        assert b.acquire() == 0.0
    assert c.t == 0.0
    b.acquire()
    assert c.t == pytest.approx(1.0)
    for _ in range(5):
        b.acquire()
    assert c.t == pytest.approx(6.0)  # steady state: one per second


def test_requests_per_minute_over_a_minute():
    c = FakeClock()
    lim = RateLimiter(requests_per_minute=120, clock=c.now, sleep=c.sleep)  # 2/s, burst 20
    for _ in range(140):
        lim.acquire()
    # 20 free (burst) + 120 at 2/s = 60 s
    assert c.t == pytest.approx(60.0, rel=1e-6)


def test_token_limit_and_big_request_debt():
    c = FakeClock()
    lim = RateLimiter(tokens_per_minute=600, clock=c.now, sleep=c.sleep)  # 10 tokens/s, capacity 100
    assert lim.acquire(est_tokens=50) == 0.0
    # larger than the capacity: waits for a full bucket, then goes into debt
    lim.acquire(est_tokens=500)
    t_after_big = c.t
    assert t_after_big == pytest.approx(5.0)  # refill 50 -> 100 at 10/s
    lim.acquire(est_tokens=10)
    # debt of 400 + 10 needed -> (410) / 10 = 41 s more
    assert c.t - t_after_big == pytest.approx(41.0)


def test_settle_refunds_overestimate():
    c = FakeClock()
    lim = RateLimiter(tokens_per_minute=600, clock=c.now, sleep=c.sleep)
    lim.acquire(est_tokens=100)
    lim.settle(est_tokens=100, actual_tokens=20)  # 80 back
    assert lim.acquire(est_tokens=80) == 0.0


def test_disabled_limiter_never_waits():
    lim = RateLimiter()
    assert not lim.enabled
    assert lim.acquire(10_000) == 0.0


def test_shared_limiter_is_per_process_and_key():
    a = shared_limiter(("openai", "m", "u"), 60, None)
    b = shared_limiter(("openai", "m", "u"), 60, None)
    c = shared_limiter(("openai", "other", "u"), 60, None)
    assert a is b and a is not c


def test_invalid_rate():
    with pytest.raises(ValueError):
        TokenBucket(0)
