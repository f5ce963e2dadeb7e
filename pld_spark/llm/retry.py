"""Retry policy: exponential backoff with jitter, honouring ``Retry-After``.

Only :class:`~pld_spark.errors.RetryableLLMError` is retried (429, 5xx, timeouts, connection
errors, malformed bodies); every other exception propagates at once. ``sleep`` and ``rand``
are injected so tests check attempt counts and delays without waiting.

Attempt numbering: attempt 1 is the first call; a policy with ``max_retries=4`` makes at
most 5 calls. The delay before retry ``k`` (k = 1, 2, ...) is::

    raw   = min(max_s, base_s * 2 ** (k - 1))
    delay = raw * (1 - jitter) + raw * jitter * U(0, 1)        # in [raw*(1-jitter), raw]

unless the error carries ``retry_after`` (the server's hint), in which case the delay is
``retry_after`` plus up to ``jitter`` x 10% of it (never less than the hint), capped at
``retry_after_cap_s``.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from pld_spark.errors import RetryableLLMError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait. Each retry is another (paid) model call."""

    max_retries: int = 4
    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5  # share of the delay that is random: 0 = deterministic, 1 = "full jitter"
    retry_after_cap_s: float = 300.0

    @classmethod
    def from_config(cls, llm_cfg) -> "RetryPolicy":
        """Build from an :class:`~pld_spark.config.LLMConfig` (max_retries, backoff_base_s, backoff_max_s)."""
        return cls(max_retries=llm_cfg.max_retries, base_s=llm_cfg.backoff_base_s, max_s=llm_cfg.backoff_max_s)

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def backoff_bounds(self, retry: int) -> tuple[float, float]:
        """(lowest, highest) delay before retry number ``retry`` (1-based) without a server hint."""
        raw = min(self.max_s, self.base_s * (2 ** max(0, retry - 1)))
        return raw * (1.0 - self.jitter), raw

    def delay(self, retry: int, retry_after: float | None = None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry_after is not None and retry_after >= 0:
            hint = min(float(retry_after), self.retry_after_cap_s)
            return hint + hint * 0.1 * self.jitter * rand()
        lo, hi = self.backoff_bounds(retry)
        return lo + (hi - lo) * rand()


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
                    rand: Callable[[], float] = random.random,
                    on_retry: Callable[[int, BaseException, float], None] | None = None) -> tuple[T, int]:
    """Call ``fn`` until it succeeds, a non-retryable error is raised, or the budget is spent.

    Returns ``(result, attempts)``. On failure the last exception is re-raised with an
    ``attempts`` attribute set to the number of calls made.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(), attempt
        except RetryableLLMError as e:
            if attempt >= policy.max_attempts:
                e.attempts = attempt  # type: ignore[attr-defined]
                raise
            wait = policy.delay(attempt, getattr(e, "retry_after", None), rand)
            log.info("retryable %s (attempt %d/%d); retrying in %.2fs", type(e).__name__, attempt,
                     policy.max_attempts, wait)
            if on_retry is not None:
                on_retry(attempt, e, wait)
            sleep(wait)
        except BaseException as e:  # noqa: BLE001 - fatal: record attempts and re-raise unchanged
            try:
                e.attempts = attempt  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
