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

The parts: breaker.py (the circuit breaker and per-identity health), request_cache.py, meter.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trajforge.inference.breaker import BackendHealth, CircuitBreaker, is_outage, shared_health
from trajforge.inference.locked import Locked
from trajforge.inference.meter import UsageMeter
from trajforge.inference.protocol import Backend, ChatRequest, CompletionRequest, Request, Response, send
from trajforge.inference.request_cache import RequestCache
from trajforge.schemas.errors import InferenceError

PROBE = ChatRequest([{"role": "user", "content": "ping"}], max_tokens=1, temperature=0.0)


class RequestFailed(InferenceError):
    """Every attempt failed; `attempts` lists each attempt's reason in order."""

    def __init__(self, message: str, *, reason: str, attempts: list[str]):
        super().__init__(message, reason=reason, retryable=False)
        self.attempts = attempts


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


class ReliableClient(Locked):
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
        with health.lock:
            if health.probed or self.breaker.state != "closed":
                return  # checked meanwhile, or the breaker already decides
            try:
                self._with_retries(PROBE, timeout_s, probing=True)
            except RequestFailed as exc:
                if self.breaker.state != "closed":
                    return  # opened meanwhile (by another client, or for a Retry-After): it decides
                if is_outage(exc.reason):
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
        if is_outage(exc.reason):
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
