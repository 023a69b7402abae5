"""The project's error vocabulary: one root, one class per kind of failure, each carrying a reason
code (`reason`) that a user can act on and that failure rows and `runs.counts` record.

It lives in the lowest layer, so every room raises and catches the same classes without
importing a room above it."""

from __future__ import annotations

import re


class TrajforgeError(Exception):
    """The root: every error trajforge raises on purpose. `reason` is a short code."""

    reason = "error"

    def __reduce__(self) -> tuple:
        # Keyword-only fields (reason, retryable, ...) survive pickling: Beam's workers and
        # Prefect send errors across processes.
        return _restore, (type(self), self.args, self.__dict__)


class ConfigError(TrajforgeError, ValueError):
    """A user's mistake in config, flags or options: one line that names the field, the value
    and the fix (`field: value ...; do this`). The CLI prints it and exits 2."""

    reason = "config"


class EnvironmentFailure(TrajforgeError, RuntimeError):
    """An environment failed on one item (crash, timeout): that item fails, not the run.
    `reason` is the code recorded in `failures.reason`: `env_crash` unless the adapter knows
    better (`env_timeout`, `browser_died`, `browser_launch`, `page_error`, `game_build`, ...)."""

    def __init__(self, message: str, *, reason: str = "env_crash") -> None:
        super().__init__(message)
        self.reason = reason


class InferenceError(TrajforgeError, RuntimeError):
    """A model call failed. `reason` is a short code such as 'timeout', 'connect', 'http_503',
    'malformed', 'bad_request', 'circuit_open', 'context_overflow'; `retryable` says whether
    asking again may help, `retry_after_s` when the server said when."""

    def __init__(self, message: str, *, reason: str, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class LakeError(TrajforgeError):
    """A lake that cannot be opened, a commit that failed (and changed nothing), a bad query."""

    reason = "lake"


class ValidationFailed(TrajforgeError, RuntimeError):
    """The staged batch broke an expectation (or the gate refused it): nothing was committed."""

    reason = "validation_failed"

    def __init__(self, summary: str, report_path: str, hint: str = "") -> None:
        super().__init__(f"validation failed, nothing committed: {summary} (report: {report_path}){hint}")
        self.summary = summary
        self.report_path = report_path


def _restore(cls: type[TrajforgeError], args: tuple, state: dict) -> TrajforgeError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def reason_code(exc: BaseException) -> str:
    """The code a user can act on for an item's failure: the exception's own `reason` when it
    carries one (InferenceError: `http_503`, `circuit_open`, ...; EnvironmentFailure:
    `env_crash`, `browser_died`, ...), `timeout` for a TimeoutError, else `internal_error`
    (the class name and message stay in `failures.detail`)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and _CODE.fullmatch(reason):  # not free text (urllib's URLError)
        return reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "internal_error"
