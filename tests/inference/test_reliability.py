"""The reliability layer against a misbehaving OpenAI-compatible server of the test's own."""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import pickle
import random
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.fake_http import JSONHandler, LoopbackServer
from trajforge.inference.client import (
    ChatRequest,
    CompletionRequest,
    InferenceError,
    OpenAIHTTPBackend,
    Usage,
    parse_response,
    parse_retry_after,
)
from trajforge.inference.reliability import (
    CircuitBreaker,
    ReliableClient,
    RequestCache,
    RequestFailed,
    RetryPolicy,
    UsageMeter,
)

REASON = {"503_retry_after": "http_503", "503": "http_503", "hang": "timeout", "bad_json": "malformed"}
REASON["missing_field"] = "malformed"
RETRY_AFTER_S = 0.2
HANG_S = 2.0


def faulty(prompt: str, attempt: int) -> str:
    """30% 503 (half with Retry-After), 10% hang, 10% malformed; deterministic per attempt, so
    the expected outcome of every request is known whatever the threads' interleaving."""
    digest = hashlib.sha256(f"{prompt}/{attempt}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    for limit, kind in [
        (0.15, "503_retry_after"),
        (0.30, "503"),
        (0.40, "hang"),
        (0.45, "bad_json"),
        (0.50, "missing_field"),
    ]:
        if u < limit:
            return kind
    return "ok"


class FakeServer:
    """Answers /v1/completions and /v1/chat/completions by `plan(prompt, attempt)`."""

    def __init__(self, plan: Callable[[str, int], str]) -> None:
        self.plan = plan
        self.attempts: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.lock = threading.Lock()
        self.httpd = LoopbackServer(self._handler())
        self.url = f"{self.httpd.origin}/v1"

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.attempts.values())

    def stop(self) -> None:
        self.httpd.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
                with server.lock:
                    attempt = len(server.attempts[prompt])
                    kind = server.plan(prompt, attempt)
                    server.attempts[prompt].append((kind, time.monotonic()))
                if kind.startswith("503"):
                    headers = {"Retry-After": str(RETRY_AFTER_S)} if kind == "503_retry_after" else {}
                    return self.send_json(503, b'{"error": {"message": "overloaded"}}', headers)
                if kind == "hang":
                    time.sleep(HANG_S)
                if kind == "bad_json":
                    return self.send_json(200, b'{"choices": [{"text": "trunc')
                if kind == "missing_field":
                    return self.send_json(200, json.dumps({"choices": [{"index": 0}]}).encode())
                text = f"echo {prompt}"
                choice = {"index": 0, "finish_reason": "stop"}
                choice |= (
                    {"text": text}
                    if "prompt" in body
                    else {"message": {"role": "assistant", "content": text}}
                )
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
                self.send_json(
                    200, json.dumps({"model": body["model"], "choices": [choice], "usage": usage}).encode()
                )

        return Handler


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[str, int], str]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(plan: Callable[[str, int], str]) -> FakeServer:
        servers.append(FakeServer(plan))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _always_ok(prompt: str, attempt: int) -> str:
    return "ok"


def test_a_batch_completes_against_a_faulty_server(fake):
    server = fake(faulty)
    timeout_s, retry = 0.3, RetryPolicy(max_attempts=4, backoff_base_s=0.05, backoff_max_s=0.2)
    client = ReliableClient(
        OpenAIHTTPBackend(server.url, "fake"),
        timeout_s=timeout_s,
        retry=retry,
        breaker=CircuitBreaker(failure_threshold=1000),  # this test is about retries
    )
    prompts = [f"request number {i}" for i in range(60)]
    concurrency = 8
    start = time.monotonic()
    outcomes = client.batch([CompletionRequest(p, max_tokens=4) for p in prompts], concurrency=concurrency)
    wall = time.monotonic() - start

    for prompt, outcome in zip(prompts, outcomes, strict=True):
        plan = [faulty(prompt, a) for a in range(retry.max_attempts)]
        tried = plan[: plan.index("ok") + 1] if "ok" in plan else plan
        assert [k for k, _ in server.attempts[prompt]] == tried
        if "ok" in plan:
            assert outcome.ok and outcome.response and outcome.response.text == f"echo {prompt}"
        else:  # failed ones say why, attempt by attempt
            assert isinstance(outcome.error, RequestFailed)
            assert outcome.error.attempts == [REASON[k] for k in plan]
            assert outcome.reason == REASON[plan[-1]] and "failed after 4 attempt(s)" in str(outcome.error)
    kinds = Counter(k for attempts in server.attempts.values() for k, _ in attempts)
    assert {"503_retry_after", "503", "hang", "bad_json", "missing_field", "ok"} <= set(kinds)

    # Retry-After is honoured: the next attempt comes no sooner than the server asked.
    for attempts in server.attempts.values():
        for (kind, at), (_, next_at) in zip(attempts, attempts[1:], strict=False):
            if kind == "503_retry_after":
                assert next_at - at >= RETRY_AFTER_S - 0.01

    # Wall time is bounded by the configuration, not by the hung requests (2 s each).
    per_request = retry.max_attempts * (timeout_s + 0.2) + (retry.max_attempts - 1) * max(
        retry.backoff_max_s, RETRY_AFTER_S + retry.backoff_base_s
    )
    bound = math.ceil(len(prompts) / concurrency) * per_request
    print(f"\nfaulty server: {len(prompts)} requests, {kinds}, wall {wall:.2f}s (bound {bound:.1f}s)")
    assert wall < bound
    stats = client.stats()
    assert stats["calls"] == sum(o.ok for o in outcomes)
    assert stats["retries"] == server.count - len(prompts)
    assert sum(stats["failures"].values()) == sum(not o.ok for o in outcomes)


def test_cache_hits_skip_the_server_and_survive_a_restart(fake, tmp_path):
    server = fake(_always_ok)
    client = ReliableClient(OpenAIHTTPBackend(server.url, "fake"), cache=tmp_path / "cache")
    request = ChatRequest([{"role": "user", "content": "hello there"}], max_tokens=8, seed=1, temperature=0.7)
    first = client.chat(request)
    second = client.chat(request)
    assert server.count == 1 and not first.cached and second.cached
    assert second.text == first.text and second.usage == first.usage
    assert client.stats()["cache_hits"] == 1 and client.stats()["cache_misses"] == 1

    resumed = ReliableClient(OpenAIHTTPBackend(server.url, "fake"), cache=tmp_path / "cache")
    assert resumed.chat(request).cached and server.count == 1  # a resumed run does not pay twice
    resumed.chat(ChatRequest(request.messages, max_tokens=9, seed=1, temperature=0.7))  # other params
    assert server.count == 2

    unseeded = ChatRequest(request.messages, max_tokens=8, temperature=0.7)
    resumed.chat(unseeded)
    resumed.chat(unseeded)
    assert server.count == 4  # independent samples are never served from the cache

    key = client.cache.key(client.model, request)  # type: ignore[union-attr]
    (tmp_path / "cache" / key[:2] / f"{key}.json").write_text('{"choices": [')  # torn by a crash
    assert not client.chat(request).cached and server.count == 5


def test_circuit_breaker_fails_fast_against_a_dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    client = ReliableClient(
        OpenAIHTTPBackend(f"http://127.0.0.1:{port}", "m"),
        timeout_s=1.0,
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.01),
        breaker=CircuitBreaker(failure_threshold=3, cooldown_s=60),
    )
    request = CompletionRequest("x", max_tokens=1)
    with pytest.raises(RequestFailed) as first:
        client.complete(request)
    assert first.value.attempts == ["connect", "connect"]
    with pytest.raises(RequestFailed) as second:
        client.complete(request)
    assert second.value.attempts == ["connect", "circuit_open"] and client.breaker.state == "open"
    start = time.monotonic()
    for _ in range(50):
        with pytest.raises(RequestFailed) as fast:
            client.complete(request)
        assert fast.value.reason == "circuit_open" and "circuit open" in str(fast.value)
    assert time.monotonic() - start < 0.5
    assert client.stats()["circuit"] == "open" and client.stats()["failures"]["circuit_open"] == 51


def test_circuit_breaker_half_opens_after_the_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    breaker.before("x")
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(InferenceError, match="circuit open"):
        breaker.before("x")
    now[0] = 10.0
    assert breaker.state == "half_open"
    breaker.before("x")  # the one trial
    with pytest.raises(InferenceError):
        breaker.before("x")  # others wait for it
    breaker.failure()  # the trial failed: open again, for another cool-down
    assert breaker.state == "open" and breaker.times_opened == 2
    now[0] = 20.0
    breaker.before("x")
    breaker.success()
    assert breaker.state == "closed"
    breaker.before("x")


def test_health_probe_generates_one_token(fake, tiny_server):
    ok = ReliableClient(OpenAIHTTPBackend(tiny_server.url, tiny_server.name)).health()
    assert ok.ok and ok.latency_s < 5
    hung = fake(lambda prompt, attempt: "hang")
    start = time.monotonic()
    health = ReliableClient(OpenAIHTTPBackend(hung.url, "fake")).health(timeout_s=0.3)
    assert not health.ok and health.detail.startswith("timeout") and time.monotonic() - start < 1.5
    dead = ReliableClient(OpenAIHTTPBackend("http://127.0.0.1:9", "fake")).health(timeout_s=1)
    assert not dead.ok and dead.detail.startswith("connect")


def test_usage_and_cost_are_summed(fake):
    server = fake(_always_ok)
    meter = UsageMeter(price_in_per_m=2.0, price_out_per_m=10.0)
    client = ReliableClient(OpenAIHTTPBackend(server.url, "fake"), meter=meter)
    responses = [client.complete(CompletionRequest(f"a b c {i}", max_tokens=4)) for i in range(5)]
    total = sum((r.usage for r in responses), Usage())
    assert total == Usage(5 * 4, 5 * 5)  # the server counts words: "a b c i" in, "echo a b c i" out
    stats = client.stats()
    assert (stats["calls"], stats["tokens_in"], stats["tokens_out"]) == (5, 20, 25)
    assert stats["cost_usd"] == pytest.approx((20 * 2.0 + 25 * 10.0) / 1e6)


def test_malformed_responses_are_retryable_errors():
    bodies = [
        {},
        {"choices": []},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": {"content": 3}}]},
        {"choices": [{"text": "x", "logprobs": {"tokens": ["a"], "token_logprobs": []}}]},
        "not an object",
    ]
    for body in bodies:
        with pytest.raises(InferenceError) as err:
            parse_response(body, chat="message" in str(body))
        assert err.value.reason == "malformed" and err.value.retryable, body


def test_a_response_that_breaks_the_constraint_is_malformed(fake):
    server = fake(_always_ok)  # ignores structured_outputs and echoes the prompt
    client = ReliableClient(
        OpenAIHTTPBackend(server.url, "fake"), retry=RetryPolicy(max_attempts=2, backoff_base_s=0.01)
    )
    with pytest.raises(RequestFailed) as err:
        client.complete(CompletionRequest("p", max_tokens=4, choice=("a", "b")))
    assert err.value.attempts == ["malformed", "malformed"] and "none of the allowed choices" in str(
        err.value
    )


def test_retry_after_forms_and_jittered_backoff():
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(future) or 0) <= 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    policy, rng = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4, retry_after_max_s=5), random.Random(0)
    delays = [policy.delay(a, None, rng) for a in range(8)]
    assert all(0 <= d <= min(4, 0.5 * 2**a) for a, d in enumerate(delays)) and len(set(delays)) == 8
    assert 2.0 <= policy.delay(0, 2.0, rng) <= 2.5 and policy.delay(0, 3600, rng) == 5


def test_the_client_pickles_and_works_after(fake, tmp_path):
    server = fake(_always_ok)
    client = ReliableClient(OpenAIHTTPBackend(server.url, "fake"), cache=tmp_path)
    client.complete(CompletionRequest("before", max_tokens=1))
    copy = pickle.loads(pickle.dumps(client))
    assert copy.complete(CompletionRequest("after", max_tokens=1)).text == "echo after"
    assert copy.complete(CompletionRequest("before", max_tokens=1)).cached


def test_requests_check_themselves():
    with pytest.raises(ValueError, match="max_tokens"):
        CompletionRequest("x", max_tokens=0)
    with pytest.raises(ValueError, match="exclude each other"):
        CompletionRequest("x", choice=("a",), json_schema={"type": "string"})
    with pytest.raises(ValueError, match="non-empty"):
        ChatRequest([], choice=("a", ""))
    assert RequestCache("/nonexistent").key("m", CompletionRequest("x")) != RequestCache(
        "/nonexistent", namespace="v2"
    ).key("m", CompletionRequest("x"))
