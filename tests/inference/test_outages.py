"""What a search sees when its model server is hung, trickles, floods, asks to be left alone, or
when the request cache's disk is full: every wait bounded, nothing paid for lost."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.fake_http import JSONHandler, LoopbackServer
from trajforge.inference import request_cache
from trajforge.inference.client import ChatRequest, OpenAIHTTPBackend
from trajforge.inference.reliability import CircuitBreaker, ReliableClient, RequestFailed, RetryPolicy
from trajforge.inference.specs import ClientOptions, reliable_client

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.1)


class Server:
    """A fake OpenAI-compatible server whose POSTs do what `behave(prompt, handler)` does; it
    counts every request by prompt. GET /v1/models answers 200, as vLLM's does while its
    engine hangs."""

    def __init__(self, behave: Callable[[str, JSONHandler], None]) -> None:
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_json(200, json.dumps({"data": [{"id": "m"}]}).encode())

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.prompts.append(prompt)
                behave(prompt, self)

        self.httpd = LoopbackServer(Handler)
        self.url = f"{self.httpd.origin}/v1"

    def stop(self) -> None:
        self.httpd.stop()


def answer(prompt: str, handler: JSONHandler, text: str = "ok") -> None:
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    handler.send_json(200, json.dumps(body).encode())


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, JSONHandler], None]], Server]]:
    servers: list[Server] = []

    def start(behave: Callable[[str, JSONHandler], None]) -> Server:
        servers.append(Server(behave))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def ask(text: str = "next action?") -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], max_tokens=4, temperature=0.0)


# -- item 7: one breaker per backend per process, probed ------------------------------------------
def test_a_hung_engine_fails_every_thread_fast_with_circuit_open_after_one_probe(serve):
    hung = threading.Event()

    def hang(prompt: str, handler: JSONHandler) -> None:
        hung.wait(10)  # the engine hangs; /v1/models keeps answering 200

    server = serve(hang)
    spec = f"openai:{server.url}#m"
    threads, outcomes = 32, []
    lock = threading.Lock()

    def search_thread() -> None:
        # as each search thread makes its policy
        client, _ = reliable_client(spec, ClientOptions(timeout_s=0.3))
        try:
            client.chat(ask())
            outcome = "ok"
        except RequestFailed as exc:
            outcome = exc.reason
        with lock:
            outcomes.append((outcome, client.breaker))

    started = time.monotonic()
    workers = [threading.Thread(target=search_thread) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - started
    hung.set()

    assert [o for o, _ in outcomes] == ["circuit_open"] * threads
    breakers = {id(b) for _, b in outcomes}
    assert len(breakers) == 1  # one breaker for the 32 searches of this process
    breaker = outcomes[0][1]
    assert breaker.times_opened == 1 and "health probe failed: timeout" in breaker.why
    # Only the probe reached the server (4 attempts at most); no search sent its request.
    assert server.prompts and set(server.prompts) == {"ping"} and len(server.prompts) <= 4
    assert wall < 4 * 0.3 + 3.5 + 2.0, wall  # the probe's attempts and backoff, not 32 x 4 timeouts


def test_a_half_open_breaker_probes_before_it_lets_a_request_through(serve):
    healthy = threading.Event()

    def engine(prompt: str, handler: JSONHandler) -> None:
        if healthy.is_set():
            return answer(prompt, handler)
        time.sleep(1.0)  # hung: longer than the client waits

    server = serve(engine)
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.3)
    client = ReliableClient(
        OpenAIHTTPBackend(server.url, "m"), timeout_s=0.2, retry=FAST_RETRY, breaker=breaker, probe=True
    )
    with pytest.raises(RequestFailed) as first:
        client.chat(ask("first"))
    assert first.value.reason == "circuit_open" and server.prompts == ["ping"]
    time.sleep(0.35)  # half-open: the trial is a probe, which fails: the request is not sent
    with pytest.raises(RequestFailed):
        client.chat(ask("second"))
    assert "first" not in server.prompts and "second" not in server.prompts
    assert breaker.times_opened == 2
    healthy.set()
    time.sleep(0.35)
    assert client.chat(ask("third")).text == "ok"
    assert server.prompts[-2:] == ["ping", "third"] and breaker.state == "closed"


def test_the_shared_breaker_is_found_again_after_unpickling(serve):
    import pickle

    server = serve(answer)
    client, _ = reliable_client(f"openai:{server.url}#m")
    copy = pickle.loads(pickle.dumps(client))
    assert copy.breaker is client.breaker  # same process: the same one
    assert copy.chat(ask()).text == "ok"


# -- item 8: wall-clock deadline, size cap, Retry-After, full disk ----------------------------------
def test_a_trickling_server_times_out_at_the_deadline(serve):
    def trickle(prompt: str, handler: JSONHandler) -> None:
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            for _ in range(1000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.5)  # one byte per 0.5 s: every socket read succeeds
        except OSError:
            pass

    server = serve(trickle)
    client = ReliableClient(
        OpenAIHTTPBackend(server.url, "m"), timeout_s=1.0, retry=RetryPolicy(max_attempts=1)
    )
    started = time.monotonic()
    with pytest.raises(RequestFailed) as err:
        client.chat(ask())
    elapsed = time.monotonic() - started
    assert err.value.reason == "timeout" and "wall-clock deadline" in str(err.value)
    assert elapsed < 1.0 + 0.6, elapsed


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversized_response_fails_with_response_too_large(serve, declared):
    def flood(prompt: str, handler: JSONHandler) -> None:
        body = b'{"choices": [{"message": {"content": "' + b"x" * (3 << 20) + b'"}}]}'
        try:
            handler.send_response(200)
            if declared:
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.send_header("Connection", "close")  # the body ends when the socket closes
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass

    server = serve(flood)
    backend = OpenAIHTTPBackend(server.url, "m", max_response_bytes=1 << 20)
    client = ReliableClient(backend, retry=FAST_RETRY, breaker=CircuitBreaker())
    with pytest.raises(RequestFailed) as err:
        client.chat(ask())
    assert err.value.reason == "response_too_large" and err.value.attempts == ["response_too_large"]
    assert len(server.prompts) == 1  # not retried: the same request would get the same answer


def test_retry_after_beyond_the_cap_fails_fast_and_opens_the_breaker(serve):
    def busy(prompt: str, handler: JSONHandler) -> None:
        handler.send_json(503, b'{"error": {"message": "maintenance"}}', {"Retry-After": "3600"})

    server = serve(busy)
    client = ReliableClient(
        OpenAIHTTPBackend(server.url, "m"),
        retry=RetryPolicy(max_attempts=4, retry_after_max_s=30),
        breaker=CircuitBreaker(),
    )
    started = time.monotonic()
    with pytest.raises(RequestFailed) as first:
        client.chat(ask())
    assert first.value.reason == "http_503" and first.value.attempts == ["http_503"]
    assert time.monotonic() - started < 1.0  # no sleep for an hour, no hammering
    for _ in range(20):
        with pytest.raises(RequestFailed) as later:
            client.chat(ask())
        assert later.value.reason == "circuit_open" and "Retry-After" in str(later.value)
    assert len(server.prompts) == 1
    assert client.breaker.state == "open" and client.breaker.open_s == 3600


def test_a_full_cache_disk_keeps_the_paid_answer(serve, tmp_path, monkeypatch):
    server = serve(answer)
    client = ReliableClient(OpenAIHTTPBackend(server.url, "m"), cache=tmp_path / "cache")

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(request_cache.os, "replace", disk_full)
    response = client.chat(ask())
    assert response.text == "ok" and not response.cached
    stats = client.stats()
    assert stats["calls"] == 1 and stats["tokens_in"] == 3 and stats["cache_write_errors"] == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no torn temp files left behind

    monkeypatch.undo()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")  # unwritable even for root
    other = ReliableClient(OpenAIHTTPBackend(server.url, "m"), cache=blocked)
    assert other.chat(ask()).text == "ok" and other.stats()["cache_write_errors"] == 1


def test_a_probe_told_to_retry_after_an_hour_keeps_the_breaker_open_that_long(serve):
    def busy(prompt: str, handler: JSONHandler) -> None:
        handler.send_json(503, b'{"error": {"message": "maintenance"}}', {"Retry-After": "3600"})

    server = serve(busy)
    client, _ = reliable_client(f"openai:{server.url}#m")  # probes before its first request
    with pytest.raises(RequestFailed) as err:
        client.chat(ask())
    assert err.value.reason == "circuit_open" and "Retry-After" in str(err.value)
    assert server.prompts == ["ping"] and client.breaker.open_s == 3600
