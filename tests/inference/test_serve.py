"""The CPU server over real HTTP on loopback, through the same client that talks to vLLM."""

from __future__ import annotations

import importlib.util
import time

import httpx
import pytest

from trajforge.environments.base import ConfigError
from trajforge.inference.client import ChatRequest, CompletionRequest, InferenceError, OpenAIHTTPBackend
from trajforge.inference.local import LocalBackend
from trajforge.inference.serve import resolve_engine, start_server

MESSAGES = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "You are in room 0 of 4. A key lies here."},
]
CHOICES = ("go east", "take key", "go west", "open door")


@pytest.fixture(scope="module")
def backend(tiny_server):
    client = OpenAIHTTPBackend(tiny_server.url, tiny_server.name, timeout_s=30)
    yield client
    client.close()


def test_models_health_and_default_name(tiny_server, tiny_model):
    assert tiny_server.name == tiny_model.name == "tiny-llama"
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200
    models = httpx.get(f"{tiny_server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-llama"]
    assert OpenAIHTTPBackend(tiny_server.url).model == "tiny-llama"  # resolved from /v1/models


def test_chat_completion_and_usage(backend, tiny_model):
    response = backend.chat(ChatRequest(MESSAGES, max_tokens=7, temperature=0.0))
    choice = response.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    local = LocalBackend(tiny_model)
    prompt = local._load()[0].apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(local._encode(prompt))
    assert 1 <= response.usage.completion_tokens <= 7
    assert response.model == "tiny-llama"

    completion = backend.complete(CompletionRequest("Thought: the key is here", max_tokens=5))
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_n_seed_and_temperature(backend):
    request = ChatRequest(MESSAGES, max_tokens=12, n=4, temperature=1.0, seed=3)
    first = backend.chat(request)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert len({c.text for c in first.choices}) > 1  # independent samples differ
    assert [c.text for c in backend.chat(request).choices] == [c.text for c in first.choices]  # seeded
    assert first.usage.completion_tokens == sum(_count(c) for c in first.choices)
    greedy = backend.chat(ChatRequest(MESSAGES, max_tokens=12, n=2, temperature=0.0))
    assert greedy.choices[0].text == greedy.choices[1].text


def _count(choice) -> int:
    return len(choice.logprobs) if choice.logprobs else 12 if choice.finish_reason == "length" else 0


def test_logprobs_chat_and_completion(backend):
    chat = backend.chat(ChatRequest(MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, seed=1))
    tokens = chat.choices[0].logprobs
    assert tokens and len(tokens) == chat.usage.completion_tokens
    for t in tokens:
        assert t.logprob <= 0 and 1 <= len(t.top) <= 3  # byte fragments decode alike and merge
        assert max(t.top.values()) >= t.logprob - 1e-5  # greedy: the token is the most likely
    completion = backend.complete(CompletionRequest("You are in room", max_tokens=4, top_logprobs=2))
    assert all(1 <= len(t.top) <= 2 for t in completion.choices[0].logprobs or [])
    assert "".join(t.token for t in completion.choices[0].logprobs or []) == completion.text


def test_prompt_logprobs_and_echo(backend):
    response = backend.complete(
        CompletionRequest("Action: take key", max_tokens=1, prompt_logprobs=0, echo=True)
    )
    lps = response.prompt_logprobs
    assert lps is not None and lps[0] is None and len(lps) == response.usage.prompt_tokens
    assert "".join(t.token for t in lps[1:] if t) in "Action: take key"
    assert response.text.startswith("Action: take key")


def test_choice_is_always_one_of_the_choices(backend):
    for seed in range(6):
        response = backend.chat(
            ChatRequest(
                MESSAGES, max_tokens=16, n=3, temperature=1.0, seed=seed, choice=CHOICES, logprobs=True
            )
        )
        assert all(c.text in CHOICES for c in response.choices)
        assert response.usage.completion_tokens == sum(len(c.logprobs or []) for c in response.choices)
    greedy = {backend.chat(ChatRequest(MESSAGES, max_tokens=16, choice=CHOICES)).text for _ in range(3)}
    assert len(greedy) == 1 and greedy <= set(CHOICES)


def test_choice_scores_equal_full_sequence_scores(tiny_model):
    """Choice scoring reuses the prompt's KV cache in one padded batch; it must agree with
    scoring each prompt + choice from scratch."""
    local = LocalBackend(tiny_model)
    prompt = "<|user|>\nYou are in room 0.<|end|>\n<|assistant|>\nAction:\n"  # no merge across the seam
    seen = set()
    for seed in range(16):  # a high temperature picks every choice, each scored in the padded batch
        fast = local.complete(
            CompletionRequest(prompt, max_tokens=4, choice=CHOICES, temperature=5.0, seed=seed, logprobs=True)
        )
        choice, tokens = fast.text, fast.choices[0].logprobs or []
        seen.add(choice)
        assert local._encode(prompt) + local._encode(choice) == local._encode(prompt + choice)
        slow = local.complete(CompletionRequest(prompt + choice, max_tokens=1, prompt_logprobs=0))
        tail = [t.logprob for t in (slow.prompt_logprobs or [])[-len(tokens) :] if t]
        assert sum(tail) == pytest.approx(sum(t.logprob for t in tokens), abs=1e-4)
    assert len(seen) >= 3


def test_stop_strings_and_continue_final(backend):
    response = backend.complete(CompletionRequest("go east go east", max_tokens=30, stop=("e",), seed=0))
    assert "e" not in response.text
    cont = backend.chat(
        ChatRequest(
            [*MESSAGES, {"role": "assistant", "content": "Thought: the key.\nAction: "}],
            continue_final=True,
            max_tokens=1,
            prompt_logprobs=0,
        )
    )
    assert cont.prompt_logprobs and cont.prompt_logprobs[-1] is not None


def test_errors_are_classified(backend):
    with pytest.raises(InferenceError) as unsupported:
        backend.chat(ChatRequest(MESSAGES, max_tokens=8, json_schema={"type": "object"}))
    assert unsupported.value.reason == "http_400" and not unsupported.value.retryable
    assert "vLLM" in str(unsupported.value)
    with pytest.raises(InferenceError) as unknown:
        backend.chat(ChatRequest(MESSAGES, max_tokens=8, model="no-such-model"))
    assert unknown.value.reason == "http_404"
    with pytest.raises(InferenceError) as too_long:
        backend.complete(CompletionRequest("hi", max_tokens=100_000))
    assert too_long.value.reason == "context_overflow" and not too_long.value.retryable
    with pytest.raises(InferenceError) as dead:
        OpenAIHTTPBackend("http://127.0.0.1:9", "m", timeout_s=2).chat(ChatRequest(MESSAGES, max_tokens=1))
    assert dead.value.reason == "connect" and dead.value.retryable


def test_models_and_tokenize_report_the_window_as_vllm_does(tiny_server, backend):
    [card] = httpx.get(f"{tiny_server.url}/v1/models").json()["data"]
    assert card["max_model_len"] == 4096  # the model config's max_position_embeddings
    tokenize = f"{tiny_server.url}/tokenize"
    chat = httpx.post(tokenize, json={"model": "tiny-llama", "messages": MESSAGES}).json()
    assert chat["max_model_len"] == 4096 and chat["count"] == len(chat["tokens"])
    used = backend.chat(ChatRequest(MESSAGES, max_tokens=1, temperature=0.0)).usage.prompt_tokens
    assert chat["count"] == used  # the chat template and generation prompt are counted
    plain = httpx.post(tokenize, json={"model": "tiny-llama", "prompt": "hi there"}).json()
    assert plain["count"] == backend.complete(CompletionRequest("hi there", max_tokens=1)).usage.prompt_tokens
    missing = httpx.post(tokenize, json={"model": "other", "prompt": "hi"})
    assert missing.status_code == 404


def test_a_prompt_over_max_model_len_is_refused_with_vllms_400(tiny_model):
    with start_server(tiny_model, engine="transformers", max_model_len=64) as server:
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["max_model_len"] == 64
        body = {"model": server.name, "messages": MESSAGES, "max_tokens": 40}
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        fits = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 2})
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert message.startswith("This model's maximum context length is 64 tokens. However, you requested ")
    assert "in the messages, 40 in the completion)" in message
    assert fits.status_code == 200


def test_throughput_of_the_tiny_server(backend, capsys):
    request = ChatRequest(MESSAGES, max_tokens=8, temperature=0.0)
    backend.chat(request)
    start, count = time.perf_counter(), 30
    for _ in range(count):
        backend.chat(request)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ntiny server: {count / elapsed:.0f} chat requests/s, {1000 * elapsed / count:.1f} ms each")
    assert elapsed / count < 1.0


def test_engine_choice_and_bad_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="engine 'nope'"):
        resolve_engine("nope")
    if importlib.util.find_spec("vllm") is None:
        assert resolve_engine("auto") == "transformers"
        with pytest.raises(ConfigError, match="needs vLLM and a CUDA GPU"):
            resolve_engine("vllm")
    with pytest.raises(ConfigError, match="not a model directory"):
        start_server(tmp_path)


def _gpu_ready() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs vLLM and a CUDA GPU")
def test_vllm_serves_the_same_protocol(tiny_model):
    with start_server(tiny_model, engine="vllm") as server:
        backend = OpenAIHTTPBackend(server.url, server.name)
        response = backend.chat(ChatRequest(MESSAGES, max_tokens=8, choice=CHOICES, logprobs=True))
        assert response.text in CHOICES
        scored = backend.chat(
            ChatRequest(
                [*MESSAGES, {"role": "assistant", "content": "Action: take key"}],
                continue_final=True,
                max_tokens=1,
                prompt_logprobs=0,
            )
        )
        assert scored.prompt_logprobs and scored.prompt_logprobs[-1] is not None
