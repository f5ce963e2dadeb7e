"""One exception hierarchy. Per-row failures are data (an ``error`` column); per-run failures
are these typed exceptions. Callers branch on the class, never on message text."""
from __future__ import annotations


class PLDError(Exception):
    """Base class of every error pld_spark raises on purpose."""


class ConfigError(PLDError):
    """Bad configuration: names the key and the file."""


class DataError(PLDError):
    """Bad input data: names the file, row or column."""


class ContractError(PLDError):
    """A stage's input lacks required columns or tables."""


class StageError(PLDError):
    """A stage failed as a whole (e.g. its error budget was exceeded)."""


class StorageError(PLDError):
    """A Delta write failed after its retries (e.g. repeated concurrent-commit conflicts)."""


class LLMError(PLDError):
    """A model call failed. ``retryable`` tells the retry policy what to do."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RetryableLLMError(LLMError):
    """Transient: 429, 5xx, connection errors, timeouts."""

    retryable = True


class RateLimitError(RetryableLLMError):
    """HTTP 429 / throttling; ``retry_after`` carries the server's hint in seconds."""


class ServerError(RetryableLLMError):
    """HTTP 5xx."""


class LLMTimeoutError(RetryableLLMError):
    """The call did not finish within the configured timeout."""


class LLMConnectionError(RetryableLLMError):
    """The endpoint could not be reached."""


class MalformedResponseError(RetryableLLMError):
    """The body was not valid JSON / lacked choices; retried like a transient fault."""


class FatalLLMError(LLMError):
    """Not retried: auth, bad request, context length exceeded, unknown model."""


class AuthError(FatalLLMError):
    """HTTP 401/403."""


class BadRequestError(FatalLLMError):
    """HTTP 400/404/422."""


class ContextLengthError(FatalLLMError):
    """The prompt does not fit the model's context window."""
