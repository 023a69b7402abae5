"""The circuit breaker, and the process's one health record per backend identity (so a dead
server opens one breaker once, however many clients talk to it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from trajforge.inference.locked import Locked
from trajforge.schemas.errors import InferenceError

# Failures that say the server is down or broken, as opposed to busy (429) or refusing this
# request (4xx): only these trip the circuit breaker.
OUTAGE_REASONS = {"timeout", "connect", "malformed"}


def is_outage(reason: str) -> bool:
    return reason in OUTAGE_REASONS or reason.startswith("http_5")


class CircuitBreaker(Locked):
    """Closed: requests flow. After `failure_threshold` consecutive outages it opens and every
    request fails at once; after `cooldown_s` it half-opens and lets one trial request through,
    whose success closes it and whose failure opens it again. `trip` opens it at once (a failed
    health probe, a server asking to be left alone for longer than we wait)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.open_s = cooldown_s  # how long this opening lasts
        self.why = ""
        self.trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.open_s else "open"

    def before(self, target: str) -> bool:
        """Raises `circuit_open` unless a request may go; True when it is the half-open trial."""
        with self._lock:
            state = self.state
            if state == "closed":
                return False
            if state == "half_open" and not self.trial_in_flight:
                self.trial_in_flight = True
                return True
            wait = max(0.0, self.open_s - (self.clock() - (self.opened_at or 0.0)))
            raise InferenceError(
                f"{target}: circuit open ({self.why}); next try in {wait:.1f}s",
                reason="circuit_open",
                retryable=False,
            )

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self.trial_in_flight = 0, None, False

    def failure(self, reason: str = "") -> None:
        with self._lock:
            self.failures += 1
            reopen = self.trial_in_flight
            self.trial_in_flight = False
            if reopen or (self.opened_at is None and self.failures >= self.failure_threshold):
                self._open(self.cooldown_s, f"after {self.failures} consecutive failures, last {reason}")

    def trip(self, seconds: float | None, why: str) -> None:
        """Open now, for `seconds` (at least the cool-down)."""
        with self._lock:
            self.trial_in_flight = False
            self._open(max(self.cooldown_s, seconds or 0.0), why)

    def _open(self, seconds: float, why: str) -> None:
        self.opened_at, self.open_s, self.why = self.clock(), seconds, why
        self.times_opened += 1

    def release(self) -> None:
        """A trial request ended without saying whether the server works (e.g. HTTP 400)."""
        with self._lock:
            self.trial_in_flight = False


class BackendHealth(Locked):
    """What a process knows about one backend: its breaker, and whether a probe found it
    generating. Shared by every client of that backend in the process (`shared_health`)."""

    def __init__(self, breaker: CircuitBreaker | None = None) -> None:
        super().__init__()
        self.breaker = breaker or CircuitBreaker()
        self.probed = False

    @property
    def lock(self) -> threading.Lock:
        """Held by the one client that probes the backend while the others wait for its answer."""
        return self._lock


_HEALTH: dict[str, BackendHealth] = {}
_HEALTH_LOCK = threading.Lock()


def shared_health(identity: str) -> BackendHealth:
    """The process's one BackendHealth of a backend identity (made on first use)."""
    with _HEALTH_LOCK:
        if identity not in _HEALTH:
            _HEALTH[identity] = BackendHealth()
        return _HEALTH[identity]
