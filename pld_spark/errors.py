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


class ModelCrashError(PLDError):
    """A process running a model died from a signal (SIGILL, SIGSEGV, SIGKILL by the OOM killer...).

    Raised on the driver when a Spark task or a Ray actor holding a model dies; the message
    names the model, the signal and the likely cause and fix (:mod:`pld_spark.engines.crash`)."""

    def __init__(self, message: str, *, signal_name: str | None = None, model: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.model = model


class UnsupportedCPUError(FatalLLMError):
    """This CPU lacks instructions the installed llama.cpp build needs (checked before loading)."""


class SparkSetupError(PLDError):
    """Spark could not start, e.g. its Maven packages (Delta) could not be resolved."""


class DriftDetected(PLDError):
    """Scoring finished and is stored, but a scored day crossed a ``drift.*`` threshold (table
    ``drift_daily``). ``pld`` exits with status 3 on it, so a scheduled job can alert; ``days`` maps
    each drifted day (ISO date) to the thresholds it crossed."""

    def __init__(self, message: str, *, days: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.days = dict(days or {})
