"""The one reliability layer, wrapping any `Backend`: per-request timeout, bounded retries
with jittered exponential backoff that honours Retry-After, a circuit breaker, a health probe,
an on-disk request cache, and usage/cost accounting.

    client = ReliableClient(OpenAIHTTPBackend(url, model), cache=RequestCache(run_dir / "llm-cache"))
    response = client.chat(ChatRequest(messages, max_tokens=64, seed=7))
    client.stats()  # calls, tokens, cost, cache hits/misses, retries, failures by reason

What is cached: requests whose answer is reproducible, i.e. greedy (temperature 0) or seeded.
An unseeded sample is never cached, so n independent asks stay independent.
"""

from __future__ import annotations

import hashlib
import json
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

CACHE_FORMAT = 1  # bump when the cached Response layout changes
# Failures that say the server is down or broken, as opposed to busy (429) or refusing this
# request (4xx): only these trip the circuit breaker.
OUTAGE_REASONS = {"timeout", "connect", "malformed"}


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
    whose success closes it and whose failure opens it again."""

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
        self.trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def before(self, target: str) -> None:
        with self._lock:
            state = self.state
            if state == "closed":
                return
            if state == "half_open" and not self.trial_in_flight:
                self.trial_in_flight = True
                return
            wait = max(0.0, self.cooldown_s - (self.clock() - (self.opened_at or 0.0)))
            raise InferenceError(
                f"{target}: circuit open after {self.failures} consecutive failures; next try in {wait:.1f}s",
                reason="circuit_open",
                retryable=False,
            )

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self.trial_in_flight = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            reopen = self.trial_in_flight
            self.trial_in_flight = False
            if reopen or (self.opened_at is None and self.failures >= self.failure_threshold):
                self.opened_at = self.clock()
                self.times_opened += 1

    def release(self) -> None:
        """A trial request ended without saying whether the server works (e.g. HTTP 400)."""
        with self._lock:
            self.trial_in_flight = False


# -- request cache --------------------------------------------------------------------------------
class RequestCache(_Locked):
    """A directory of JSON files named by the sha256 of (model, kind, input, parameters).
    Writes are atomic renames, so several processes may share one directory."""

    def __init__(self, directory: str | Path, namespace: str = "") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.namespace = namespace  # e.g. a prompt-template version: changing it misses the cache
        self.hits = 0
        self.misses = 0

    def key(self, model: str, request: Request) -> str:
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
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Response | None:
        try:
            response = Response.from_dict(json.loads(self._path(key).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            response = None  # absent or unreadable (a torn file from a killed run): ask again
        with self._lock:
            if response is None:
                self.misses += 1
            else:
                self.hits += 1
        return response

    def put(self, key: str, response: Response) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(replace(response, cached=False).to_dict(), fh)
        os.replace(tmp, path)


# -- usage and cost -------------------------------------------------------------------------------
class UsageMeter(_Locked):
    """Tokens per call and summed; cost from prices in USD per million tokens. Cached answers
    are counted apart: they cost nothing again."""

    def __init__(self, price_in_per_m: float = 0.0, price_out_per_m: float = 0.0) -> None:
        super().__init__()
        self.price_in_per_m = price_in_per_m
        self.price_out_per_m = price_out_per_m
        self.calls = 0
        self.usage = Usage()
        self.cached_calls = 0
        self.cached_usage = Usage()
        self.retries = 0
        self.failures: Counter[str] = Counter()

    def record(self, usage: Usage, *, cached: bool) -> None:
        with self._lock:
            if cached:
                self.cached_calls += 1
                self.cached_usage += usage
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
    """A `Backend` that makes any backend dependable; see the module docstring."""

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
    ) -> None:
        super().__init__()
        self.backend = backend
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.cache = RequestCache(cache) if isinstance(cache, str | Path) else cache
        self.meter = meter or UsageMeter()
        self.sleep = sleep
        self._rng = random.Random(seed)

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
            key = self.cache.key(self.model, request)
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.record(hit.usage, cached=True)
                return replace(hit, cached=True)
        response = self._with_retries(request, timeout_s or self.timeout_s)
        self.meter.record(response.usage, cached=False)
        if key is not None:
            self.cache.put(key, response)  # type: ignore[union-attr]
        return response

    def _with_retries(self, request: Request, timeout_s: float) -> Response:
        target = f"{type(request).__name__} to {request.model or self.model}"
        attempts: list[str] = []
        last: InferenceError | None = None
        for attempt in range(self.retry.max_attempts):
            try:
                self.breaker.before(target)
                response = _check(request, send(self.backend, request, timeout_s=timeout_s))
            except InferenceError as exc:
                last = exc
                attempts.append(exc.reason)
                self._note_failure(exc)
                if not exc.retryable or attempt == self.retry.max_attempts - 1:
                    break
                self.meter.record_retry()
                self.sleep(self.retry.delay(attempt, exc.retry_after_s, self._rng))
                continue
            self.breaker.success()
            return response
        assert last is not None
        self.meter.record_failure(last.reason)
        raise RequestFailed(
            f"{target} failed after {len(attempts)} attempt(s) ({', '.join(attempts)}): {last}",
            reason=last.reason,
            attempts=attempts,
        ) from last

    def _note_failure(self, exc: InferenceError) -> None:
        if exc.reason in OUTAGE_REASONS or exc.reason.startswith("http_5"):
            self.breaker.failure()
        elif exc.reason != "circuit_open":
            self.breaker.release()

    def health(self, timeout_s: float = 10.0) -> Health:
        """A one-token generation: vLLM's /health can stay 200 while its engine hangs."""
        start = time.monotonic()
        request = ChatRequest([{"role": "user", "content": "ping"}], max_tokens=1)
        try:
            send(self.backend, request, timeout_s=timeout_s)
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
        cache = {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses} if self.cache else {}
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
