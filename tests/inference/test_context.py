"""Prompts fitted to a model's context window: the fitting rule on its own, the estimate against a
real byte-level tokenizer, and the window and counts as the CPU server reports them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.fake_http import JSONHandler, LoopbackServer
from trajforge.inference.client import ChatRequest, InferenceError, OpenAIHTTPBackend
from trajforge.inference.context import ContextWindow, estimate_tokens, fit_messages, shorten
from trajforge.inference.local import LocalBackend
from trajforge.inference.reliability import ReliableClient
from trajforge.inference.scoring import candidate_requests, score_many
from trajforge.inference.serve import start_server
from trajforge.validators.critic import ActionCritic, action_messages
from trajforge.validators.judge import critique_question, judge_question


def conversation(steps: int, obs: str = "You are in a room. " * 20) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "You act."}, {"role": "user", "content": f"Task: win\n\n{obs} 0"}]
    for i in range(1, steps + 1):
        msgs += [{"role": "assistant", "content": f"go {i}"}, {"role": "user", "content": f"{obs} {i}"}]
    return msgs


def chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


@pytest.fixture(scope="module")
def small_server(tiny_model):
    """The CPU server over the tiny model with a 512-token context."""
    with start_server(tiny_model, engine="transformers", max_model_len=512) as server:
        yield server


def test_the_oldest_history_goes_first_and_the_task_and_last_turn_stay():
    msgs = conversation(10)
    fitted = fit_messages(msgs, 2200, chars)
    assert chars(fitted) <= 2200
    assert fitted[:3] == msgs[:3]  # system, the task's turn and its reply
    # The six oldest turns after the first went; the turn after the gap says so.
    assert fitted[3]["content"] == "[... 6 earlier steps cut ...]\n\n" + msgs[-7]["content"]
    assert fitted[4:] == msgs[-6:]
    assert fit_messages(msgs, 10**6, chars) == msgs  # what fits is sent as it is


def test_long_observations_are_cut_with_a_marker_oldest_first_keeping_task_and_actions():
    obs = "x" * 3000
    msgs = [
        {"role": "system", "content": "You act."},
        {"role": "user", "content": f"Task: win the game\n\n{obs}"},
        {"role": "assistant", "content": "go"},
        {"role": "user", "content": f"{obs}\n\nAdmissible actions:\n- go\n- stop"},
    ]
    tail = len("\n\nAdmissible actions:\n- go\n- stop")
    fitted = fit_messages(msgs, 3500, chars, keep_head=len("Task: win the game\n\n"), keep_tail=tail)
    first, last = fitted[1]["content"], fitted[3]["content"]
    assert first.startswith("Task: win the game\n\n") and "characters cut ...]" in first
    assert last == msgs[3]["content"]  # the first observation was cut enough: the current one is whole
    tighter = fit_messages(msgs, 900, chars, keep_head=20, keep_tail=tail)
    assert chars(tighter) <= 900
    assert tighter[3]["content"].endswith("Admissible actions:\n- go\n- stop")
    assert "characters cut ...]" in tighter[3]["content"]


def test_a_prompt_that_cannot_fit_fails_with_context_overflow():
    msgs = [{"role": "system", "content": "s" * 500}, {"role": "user", "content": "u" * 500}]
    with pytest.raises(InferenceError) as exc:
        fit_messages(msgs, 400, chars)
    assert exc.value.reason == "context_overflow" and not exc.value.retryable


def test_shorten_keeps_head_and_tail_and_says_how_much_was_cut():
    text = "".join(str(i % 10) for i in range(1000))
    cut = shorten(text, 100)
    assert cut.startswith(text[:50]) and cut.endswith(text[-50:]) and "[... 900 characters cut ...]" in cut
    assert shorten("short", 100) == "short"


def test_the_estimate_never_undercounts_a_finely_splitting_byte_level_tokenizer(tiny_model):
    """Calibration: the tiny model's BPE, trained on a few lines, splits text finely (0.6 tokens
    per byte of a TextWorld page, more for unseen scripts); the estimate stays above it."""
    local = LocalBackend(tiny_model)
    texts = [
        "-= Kitchen =-\nYou've just walked into a kitchen. You see a fridge, an oven and a table.",
        '- button "Add to cart" [ref=e12]\n- link "Home":\n  - /url: /\n' * 5,
        "Ünïcödé → 東京 ✓ " * 10,
        "\x00\x01 ~~~ |||| }}}} ",
    ]
    for text in texts:
        msgs = [{"role": "system", "content": "You act."}, {"role": "user", "content": text}]
        assert estimate_tokens(msgs) >= local.tokenize(msgs)


def test_the_server_reports_its_window_and_counts_like_its_own_chat(small_server):
    backend = OpenAIHTTPBackend(small_server.url, small_server.name, timeout_s=30)
    msgs = conversation(1)
    assert backend.model_info()["max_model_len"] == 512
    counted = backend.tokenize(msgs)
    response = backend.chat(ChatRequest(msgs, max_tokens=4, temperature=0.0))
    assert counted == response.usage.prompt_tokens
    window = ContextWindow(ReliableClient(backend))
    assert window.size == 512 and window.count(msgs) == counted
    assert ContextWindow(backend, tokens=300).size == 300  # model.context_tokens overrides the server


def test_a_fitted_prompt_is_answered_where_the_whole_one_is_refused(small_server):
    backend = OpenAIHTTPBackend(small_server.url, small_server.name, timeout_s=30)
    client = ReliableClient(backend)
    msgs = conversation(12)
    with pytest.raises(InferenceError) as refused:
        client.chat(ChatRequest(msgs, max_tokens=64, temperature=0.0))
    assert refused.value.reason == "context_overflow"
    assert "This model's maximum context length is 512 tokens" in str(refused.value)
    assert client.stats()["retries"] == 0  # not retryable: asking again cannot help
    fitted = ContextWindow(client).fit(msgs, 64)
    answer = client.chat(ChatRequest(fitted, max_tokens=64, temperature=0.0))
    assert answer.usage.prompt_tokens + 64 <= 512 and fitted[-1]["content"].endswith(msgs[-1]["content"])


class NoTokenize(JSONHandler):
    """A plain OpenAI-style server in front of the CPU server: no /tokenize (HTTP 404)."""

    upstream = ""

    def do_GET(self) -> None:  # noqa: N802
        self._forward(None)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/tokenize":
            return self.send_json(404, b'{"detail": "Not Found"}')
        self._forward(body)

    def _forward(self, body: bytes | None) -> None:
        request = urllib.request.Request(
            self.upstream + self.path,
            data=body,
            method=self.command,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                self.send_json(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            self.send_json(exc.code, exc.read())


def test_without_tokenize_the_estimate_fits_the_prompt(small_server):
    handler = type("Handler", (NoTokenize,), {"upstream": small_server.url})
    proxy = LoopbackServer(handler)
    try:
        backend = OpenAIHTTPBackend(proxy.origin, small_server.name, timeout_s=30)
        window = ContextWindow(backend)
        fitted = window.fit(conversation(12), 64)
        answer = backend.chat(ChatRequest(fitted, max_tokens=64, temperature=0.0))
    finally:
        proxy.stop()
    assert not window._server_counts  # the 404 was taken as "not offered"
    assert answer.usage.prompt_tokens + 64 <= 512


def test_a_long_trajectory_is_judged_and_critiqued_within_a_small_context(small_server):
    client = ReliableClient(OpenAIHTTPBackend(small_server.url, small_server.name, timeout_s=30))
    steps = [
        {"index": i, "observation": f"Room {i}. " + "Dusty walls. " * 30, "action": "go east"}
        for i in range(30)
    ]
    trajectory = {"instruction": "Open the door.", "steps": steps, "final_observation": "The door opens."}
    whole = candidate_requests(small_server.name, judge_question(trajectory))[0]
    with pytest.raises(InferenceError) as refused:  # sent as it is, the judge's prompt does not fit
        client.chat(whole)
    assert refused.value.reason == "context_overflow"
    verdict, critique = score_many(
        client, small_server.name, [judge_question(trajectory), critique_question(trajectory)]
    )
    assert not isinstance(verdict, Exception) and not isinstance(critique, Exception)
    assert len(verdict[0]) == 2 and len(critique[0]) == 30


def test_the_critic_ranks_every_action_of_a_long_page_within_a_small_context(small_server):
    client = ReliableClient(OpenAIHTTPBackend(small_server.url, small_server.name, timeout_s=30))
    actions = [f"click button {i}" for i in range(12)]
    page = '- button "Buy" [ref=e1]\n' * 200  # 2000 characters reach the critic: ~1000 tokens
    assert ContextWindow(client).count(action_messages("Buy the hose.", page, actions)) > 512
    values = ActionCritic(client, small_server.name).values("Buy the hose.", page, actions)
    assert set(values) == set(actions) and max(values.values()) == 1.0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 500. This model's maximum context length "
            "is 1024 tokens and your request has 600 input tokens (500 > 1024 - 600).",
            "context_overflow",
        ),
        (
            "The decoder prompt (length 5000) is longer than the maximum model length of 4096.",
            "context_overflow",
        ),
        ("prompt exceeds the model's context", "context_overflow"),
        ("temperature must be non-negative", "http_400"),
    ],
)
def test_a_servers_too_long_refusal_is_context_overflow_and_not_retried(message, reason):
    class Refuses(JSONHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
            self.send_json(400, json.dumps(body).encode())

    server = LoopbackServer(Refuses)
    try:
        client = ReliableClient(OpenAIHTTPBackend(server.origin, "m", timeout_s=5), sleep=lambda _: None)
        with pytest.raises(InferenceError) as exc:
            client.chat(ChatRequest([{"role": "user", "content": "hi"}], max_tokens=500))
    finally:
        server.stop()
    assert exc.value.reason == reason and client.stats()["retries"] == 0
