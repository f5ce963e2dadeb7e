"""Retry policy: attempt counts, Retry-After, jitter bounds (no sleeping: sleep is injected)."""
from __future__ import annotations

import pytest

from pld_spark.config import LLMConfig
from pld_spark.errors import (
    AuthError, BadRequestError, ContextLengthError, LLMTimeoutError, MalformedResponseError, RateLimitError,
    ServerError)
from pld_spark.llm.retry import RetryPolicy, call_with_retry


class Flaky:
    """Raises the given errors in order, then returns 'ok'."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_policy_from_config():
    p = RetryPolicy.from_config(LLMConfig(max_retries=3, backoff_base_s=0.25, backoff_max_s=4))
    assert (p.max_retries, p.base_s, p.max_s, p.max_attempts) == (3, 0.25, 4, 4)


@pytest.mark.parametrize("exc", [RateLimitError("x"), ServerError("x"), LLMTimeoutError("x"),
                                 MalformedResponseError("x")])
def test_retryable_errors_end_in_success(exc):
    sleeps = []
    fn = Flaky([exc, type(exc)("again")])
    value, attempts = call_with_retry(fn, RetryPolicy(max_retries=4), sleep=sleeps.append, rand=lambda: 0.5)
    assert value == "ok" and attempts == 3 and fn.calls == 3
    assert len(sleeps) == 2


def test_retry_budget_exhausted_raises_last_error_with_attempts():
    sleeps = []
    fn = Flaky([ServerError(f"e{i}") for i in range(10)])
    with pytest.raises(ServerError) as ei:
        call_with_retry(fn, RetryPolicy(max_retries=3), sleep=sleeps.append)
    assert fn.calls == 4 and ei.value.attempts == 4
    assert len(sleeps) == 3  # no sleep after the last attempt


@pytest.mark.parametrize("exc", [AuthError("x"), BadRequestError("x"), ContextLengthError("x"), KeyError("bug")])
def test_fatal_errors_are_not_retried(exc):
    sleeps = []
    fn = Flaky([exc])
    with pytest.raises(type(exc)) as ei:
        call_with_retry(fn, RetryPolicy(max_retries=5), sleep=sleeps.append)
    assert fn.calls == 1 and sleeps == []
    assert ei.value.attempts == 1


def test_zero_retries_means_one_attempt():
    fn = Flaky([ServerError("x")])
    with pytest.raises(ServerError):
        call_with_retry(fn, RetryPolicy(max_retries=0), sleep=lambda s: None)
    assert fn.calls == 1


def test_retry_after_is_honoured():
    sleeps = []
    fn = Flaky([RateLimitError("slow down", status=429, retry_after=7.0)])
    call_with_retry(fn, RetryPolicy(max_retries=2, base_s=0.1, max_s=1.0, jitter=0.5), sleep=sleeps.append,
                    rand=lambda: 1.0)
    assert len(sleeps) == 1
    # never less than the server's hint, even though the backoff cap (1 s) is smaller
    assert 7.0 <= sleeps[0] <= 7.0 * 1.05 + 1e-9


def test_retry_after_is_capped():
    p = RetryPolicy(retry_after_cap_s=60, jitter=0.0)
    assert p.delay(1, retry_after=3600) == 60


def test_exponential_backoff_and_jitter_bounds():
    p = RetryPolicy(max_retries=6, base_s=0.5, max_s=4.0, jitter=0.5)
    expected_raw = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for k, raw in enumerate(expected_raw, start=1):
        lo, hi = p.backoff_bounds(k)
        assert (lo, hi) == (raw * 0.5, raw)
        assert p.delay(k, rand=lambda: 0.0) == pytest.approx(lo)
        assert p.delay(k, rand=lambda: 1.0) == pytest.approx(hi)
    import random

    rng = random.Random(1)
    for _ in range(500):
        k = rng.randint(1, 6)
        d = p.delay(k, rand=rng.random)
        lo, hi = p.backoff_bounds(k)
        assert lo <= d <= hi


def test_no_jitter_is_deterministic():
    p = RetryPolicy(base_s=1.0, max_s=30, jitter=0.0)
    assert [p.delay(k, rand=lambda: 0.9) for k in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_delays_follow_policy_sequence():
    sleeps = []
    fn = Flaky([ServerError("1"), ServerError("2"), ServerError("3")])
    call_with_retry(fn, RetryPolicy(max_retries=3, base_s=1.0, max_s=10, jitter=0.0), sleep=sleeps.append)
    assert sleeps == [1.0, 2.0, 4.0]
