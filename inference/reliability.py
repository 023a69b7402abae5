"""The one reliability layer, wrapping any `Backend`: per-request timeout, bounded retries
with jittered exponential backoff that honours Retry-After, a circuit breaker, a health probe,
an on-disk request cache, and usage/cost accounting.

The breaker and the health state belong to the backend (its `identity`, e.g. server URL and
model), one per process, however many clients (one per search thread) talk to it: a dead server
opens one breaker once. With `probe=True` a one-token generation checks the server before the
first request and whenever the breaker half-opens (vLLM's /v1/models stays 200 while its engine
hangs).

    client = ReliableClient(OpenAIHTTPBackend(url, model), cache=RequestCache(run_dir / "llm-cache"))
    response = client.chat(ChatRequest(messages, max_tokens=64, seed=7))
    client.stats()  # calls, tokens, cost, cache hits/misses, retries, failures by reason

What is cached: requests whose answer is reproducible, i.e. greedy (temperature 0) or seeded.
An unseeded sample is never cached, so n independent asks stay independent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trajforge.inference.client import (
    Backend,
    ChatRequest,
    CompletionRequest,
    InferenceError,
    Request,
    Response,
    Usage,
    send,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached Response layout changes
# Failures that say the server is down or broken, as opposed to busy (429) or refusing this
# request (4xx): only these trip the circuit breaker.
OUTAGE_REASONS = {"timeout", "connect", "malformed"}
PROBE = ChatRequest([{"role": "user", "content": "ping"}], max_tokens=1, temperature=0.0)


def _is_outage(reason: str) -> bool:
    return reason in OUTAGE_REASONS or reason.startswith("http_5")


class RequestFailed(InferenceError):
    """Every attempt failed; `attempts` lists each attempt's reason in order."""

    def __init__(self, message: str, *, reason: str, attempts: list[str]):
        super().__init__(message, reason=reason, retryable=False)
        self.attempts = attempts


class _Locked:
    """Holds a lock that is made again after unpickling (Beam ships objects to workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# -- retries --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 30.0  # a server asking for longer than this is not waited for

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Full-jitter exponential backoff; at least Retry-After when the server sent one."""
        backoff = rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
        if retry_after_s is None:
            return backoff
        return min(retry_after_s + rng.uniform(0, self.backoff_base_s), self.retry_after_max_s)


# -- circuit breaker ------------------------------------------------------------------------------
class CircuitBreaker(_Locked):
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


class BackendHealth(_Locked):
    """What a process knows about one backend: its breaker, and whether a probe found it
    generating. Shared by every client of that backend in the process (`shared_health`)."""

    def __init__(self, breaker: CircuitBreaker | None = None) -> None:
        super().__init__()
        self.breaker = breaker or CircuitBreaker()
        self.probed = False


_HEALTH: dict[str, BackendHealth] = {}
_HEALTH_LOCK = threading.Lock()


def shared_health(identity: str) -> BackendHealth:
    """The process's one BackendHealth of a backend identity (made on first use)."""
    with _HEALTH_LOCK:
        if identity not in _HEALTH:
            _HEALTH[identity] = BackendHealth()
        return _HEALTH[identity]


# -- request cache --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    response: Response
    cost_usd: float | None  # what the answer cost when it was paid (None: written before this was kept)


class RequestCache(_Locked):
    """A directory of JSON files named by the sha256 of (model, its fingerprint, kind, input,
    parameters). Writes are atomic renames, so several processes may share one directory. A
    write that fails (disk full) is counted and logged, never raised: the answer was paid for."""

    def __init__(self, directory: str | Path, namespace: str = "") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.namespace = namespace  # e.g. a prompt-template version: changing it misses the cache
        self.hits = 0
        self.misses = 0
        self.write_errors = 0

    def key(self, model: str, request: Request, fingerprint: str = "") -> str:
        kind = "chat" if isinstance(request, ChatRequest) else "completion"
        data = request.messages if isinstance(request, ChatRequest) else request.prompt
        extra = {"continue_final": request.continue_final} if isinstance(request, ChatRequest) else {}
        if isinstance(request, CompletionRequest):
            extra = {"echo": request.echo}
        payload = {
            "format": CACHE_FORMAT,
            "namespace": self.namespace,
            "model": request.model or model,
            "kind": kind,
            "input": data,
            "params": {**request.params(), **extra},
        }
        if fingerprint:  # the weights (hf:, vllm:) or the user's model.revision (openai:)
            payload["fingerprint"] = fingerprint
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Response | None:
        entry = self.lookup(key)
        return None if entry is None else entry.response

    def lookup(self, key: str) -> CacheEntry | None:
        try:
            data = json.loads(self._path(key).read_text())
            cost = data.get("cost_usd")
            entry = CacheEntry(Response.from_dict(data), None if cost is None else float(cost))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entry = None  # absent or unreadable (a torn file from a killed run): ask again
        with self._lock:
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
        return entry

    def put(self, key: str, response: Response, cost_usd: float | None = None) -> None:
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({**replace(response, cached=False).to_dict(), "cost_usd": cost_usd}, fh)
            os.replace(tmp, path)
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
            log.warning("request cache: cannot write %s (%s); the answer is used, not cached", path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


# -- usage and cost -------------------------------------------------------------------------------
class UsageMeter(_Locked):
    """Tokens per call and summed; cost from prices in USD per million tokens. Cached answers
    are counted apart (they cost nothing again), with what they cost when they were paid."""

    def __init__(self, price_in_per_m: float = 0.0, price_out_per_m: float = 0.0) -> None:
        super().__init__()
        self.price_in_per_m = price_in_per_m
        self.price_out_per_m = price_out_per_m
        self.calls = 0
        self.usage = Usage()
        self.cached_calls = 0
        self.cached_usage = Usage()
        self.cached_cost_usd = 0.0
        self.retries = 0
        self.failures: Counter[str] = Counter()

    def record(self, usage: Usage, *, cached: bool, paid_usd: float | None = None) -> None:
        """`paid_usd`: a cached answer's original cost (default: its tokens at today's prices)."""
        with self._lock:
            if cached:
                self.cached_calls += 1
                self.cached_usage += usage
                self.cached_cost_usd += self.cost_of(usage) if paid_usd is None else paid_usd
            else:
                self.calls += 1
                self.usage += usage

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def cost_of(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.price_in_per_m + usage.completion_tokens * self.price_out_per_m
        ) / 1e6

    @property
    def cost_usd(self) -> float:
        return self.cost_of(self.usage)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "tokens_in": self.usage.prompt_tokens,
                "tokens_out": self.usage.completion_tokens,
                "cost_usd": self.cost_usd,
                "cached_calls": self.cached_calls,
                "cached_tokens_in": self.cached_usage.prompt_tokens,
                "cached_tokens_out": self.cached_usage.completion_tokens,
                "cached_cost_usd": self.cached_cost_usd,
                "retries": self.retries,
                "failures": dict(self.failures),
            }


# -- the client -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Health:
    ok: bool
    latency_s: float
    detail: str


@dataclass(frozen=True)
class Outcome:
    """One request of a batch: its response, or the error that ended it."""

    response: Response | None
    error: InferenceError | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def reason(self) -> str | None:
        return self.error.reason if self.error else None


class ReliableClient(_Locked):
    """A `Backend` that makes any backend dependable; see the module docstring.

    Without an explicit `breaker`, the breaker and health state are the process's one for the
    backend's `identity` (made again in the process that unpickles the client). `fingerprint`
    names the model's weights (or revision) in cache keys: new weights miss the cache."""

    def __init__(
        self,
        backend: Backend,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        cache: RequestCache | str | Path | None = None,
        meter: UsageMeter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        probe: bool = False,
        fingerprint: str = "",
    ) -> None:
        super().__init__()
        self.backend = backend
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        identity = getattr(backend, "identity", None) if breaker is None else None
        self._identity: str | None = identity if isinstance(identity, str) else None
        self._health = shared_health(self._identity) if self._identity else BackendHealth(breaker)
        self.cache = RequestCache(cache) if isinstance(cache, str | Path) else cache
        self.meter = meter or UsageMeter()
        self.sleep = sleep
        self.probe = probe
        self.fingerprint = fingerprint
        self._rng = random.Random(seed)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if self._identity:
            state.pop("_health")  # the receiving process has its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._identity:
            self._health = shared_health(self._identity)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._health.breaker

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def capabilities(self) -> frozenset[str]:
        return self.backend.capabilities

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        return self.call(request, timeout_s=timeout_s)

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response:
        return self.call(request, timeout_s=timeout_s)

    def close(self) -> None:
        self.backend.close()

    def call(self, request: Request, *, timeout_s: float | None = None) -> Response:
        key = None
        if self.cache is not None and (request.temperature == 0 or request.seed is not None):
            key = self.cache.key(self.model, request, self.fingerprint)
            hit = self.cache.lookup(key)
            if hit is not None:
                self.meter.record(hit.response.usage, cached=True, paid_usd=hit.cost_usd)
                return replace(hit.response, cached=True)
        seconds = timeout_s or self.timeout_s
        self._probe_first(seconds)
        response = self._with_retries(request, seconds)
        self.meter.record(response.usage, cached=False)
        if key is not None:
            self.cache.put(key, response, self.meter.cost_of(response.usage))  # type: ignore[union-attr]
        return response

    def _probe_first(self, timeout_s: float) -> None:
        """Before the first request to a backend in this process, one thread checks that it
        generates (the others wait for its answer); a failed check opens the breaker."""
        health = self._health
        if not self.probe or health.probed:
            return
        with health._lock:
            if health.probed or self.breaker.state != "closed":
                return  # checked meanwhile, or the breaker already decides
            try:
                self._with_retries(PROBE, timeout_s, probing=True)
            except RequestFailed as exc:
                if self.breaker.state != "closed":
                    return  # opened meanwhile (by another client, or for a Retry-After): it decides
                if _is_outage(exc.reason):
                    self.breaker.trip(None, f"the health probe failed: {exc.reason}")
                    return
            health.probed = True  # it generates, or answers this request with a 4xx of its own

    def _with_retries(self, request: Request, timeout_s: float, *, probing: bool = False) -> Response:
        target = f"{type(request).__name__} to {request.model or self.model}"
        attempts: list[str] = []
        last: InferenceError | None = None
        for attempt in range(self.retry.max_attempts):
            try:
                trial = self.breaker.before(target)
                if trial and self.probe and not probing:
                    # The half-open trial is a one-token generation, not a user's request.
                    send(self.backend, PROBE, timeout_s=timeout_s)
                    self.breaker.success()
                    self._health.probed = True
                response = _check(request, send(self.backend, request, timeout_s=timeout_s))
            except InferenceError as exc:
                last = exc
                attempts.append(exc.reason)
                self._note_failure(exc)
                wait = exc.retry_after_s
                if wait is not None and wait > self.retry.retry_after_max_s:
                    # Longer than we ever wait: fail now, and let nobody ask before it is over.
                    self.breaker.trip(wait, f"the server asked to wait {wait:.0f}s (Retry-After)")
                    break
                if not exc.retryable or attempt == self.retry.max_attempts - 1:
                    break
                if not probing:
                    self.meter.record_retry()
                self.sleep(self.retry.delay(attempt, exc.retry_after_s, self._rng))
                continue
            self.breaker.success()
            return response
        assert last is not None
        if not probing:
            self.meter.record_failure(last.reason)
        raise RequestFailed(
            f"{target} failed after {len(attempts)} attempt(s) ({', '.join(attempts)}): {last}",
            reason=last.reason,
            attempts=attempts,
        ) from last

    def _note_failure(self, exc: InferenceError) -> None:
        if _is_outage(exc.reason):
            self.breaker.failure(exc.reason)
        elif exc.reason != "circuit_open":
            self.breaker.release()

    def health(self, timeout_s: float = 10.0) -> Health:
        """A one-token generation: vLLM's /health can stay 200 while its engine hangs."""
        start = time.monotonic()
        try:
            send(self.backend, PROBE, timeout_s=timeout_s)
        except InferenceError as exc:
            return Health(False, time.monotonic() - start, f"{exc.reason}: {exc}")
        return Health(True, time.monotonic() - start, "ok")

    def batch(self, requests: Sequence[Request], *, concurrency: int = 8) -> list[Outcome]:
        """All requests, `concurrency` at a time, in order; a failed one is an Outcome with its error."""

        def one(request: Request) -> Outcome:
            try:
                return Outcome(self.call(request))
            except InferenceError as exc:
                return Outcome(None, exc)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, requests))

    def stats(self) -> dict[str, Any]:
        cache = (
            {
                "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses,
                "cache_write_errors": self.cache.write_errors,
            }
            if self.cache
            else {}
        )
        return {**self.meter.snapshot(), **cache, "circuit": self.breaker.state}


def _check(request: Request, response: Response) -> Response:
    """A response that does not answer the request is as malformed as bad JSON."""
    problem = ""
    if len(response.choices) != request.n:
        problem = f"asked for n={request.n} choices, got {len(response.choices)}"
    elif request.choice is not None and any(c.text not in request.choice for c in response.choices):
        problem = f"answer {response.text!r} is none of the allowed choices"
    if problem:
        raise InferenceError(f"malformed response: {problem}", reason="malformed", retryable=True)
    return response
