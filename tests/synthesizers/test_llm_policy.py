"""LLMPolicy against a tiny model served over real HTTP on loopback, and in-process (hf:)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

from trajforge.environments.base import ConfigError, TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.inference.client import (
    CONTINUE_FINAL,
    PROMPT_LOGPROBS,
    Backend,
    ChatRequest,
    Choice,
    CompletionRequest,
    Response,
    Usage,
)
from trajforge.inference.serve import ServerHandle, start_server
from trajforge.schemas.conversation import SYSTEM_PROMPT
from trajforge.synthesizers.llm_policy import LLMPolicy, make_llm_policy, match_admissible, parse_react
from trajforge.synthesizers.policies import Context
from trajforge.synthesizers.rollout import rollout

TASK = TaskSpec("corridor-3-1", seed=7)


@pytest.fixture
def server(tiny_server) -> ServerHandle:
    return tiny_server


class CheckedToy(ToyEnvironment):
    """The toy corridor, failing the test on any action it would not admit."""

    def step(self, action: str):
        assert action in self.admissible_actions(), action
        return super().step(action)


@dataclass
class Spy:
    """Wraps a backend, records the requests and can hide capabilities."""

    inner: Backend
    caps: frozenset[str] | None = None
    requests: list[ChatRequest] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def capabilities(self) -> frozenset[str]:
        return self.inner.capabilities if self.caps is None else self.caps

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        self.requests.append(request)
        return self.inner.chat(request, timeout_s=timeout_s)

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response:
        return self.inner.complete(request, timeout_s=timeout_s)

    def close(self) -> None:
        self.inner.close()


def _ctx(env: ToyEnvironment, task: TaskSpec = TASK) -> Context:
    reset = env.reset(task)
    return Context(env, reset.instruction, reset.observation, env.admissible_actions())


def _ctx_three() -> Context:
    """Room 1 of corridor-3-1: three admissible actions."""
    env = ToyEnvironment()
    instruction = env.reset(TASK).instruction
    observation = env.step("go east").observation
    ctx = Context(env, instruction, observation, env.admissible_actions())
    assert ctx.admissible == ["go east", "go west", "take key"]
    return ctx


def _spec(server: ServerHandle) -> str:
    return f"openai:{server.url}/v1#{server.name}"


def test_rollout_over_http_keeps_actions_admissible_and_records_tokens(server, tmp_path):
    policy = make_llm_policy(_spec(server), cache_dir=tmp_path / "cache", max_tokens=24)
    ep = rollout(CheckedToy(), TASK, policy, seed=1, max_steps=8, timeout_s=60)
    assert ep.steps and ep.stop_reason in ("done", "max_steps")
    assert ep.tokens_in > 0 and ep.tokens_out > 0
    calls = policy.client.stats()["calls"]

    # Same seed, same episode; a resumed run finds every request in the cache.
    again = rollout(CheckedToy(), TASK, policy, seed=1, max_steps=8, timeout_s=60)
    assert [s.action for s in again.steps] == [s.action for s in ep.steps]
    assert (again.tokens_in, again.tokens_out) == (ep.tokens_in, ep.tokens_out)
    assert policy.client.stats()["calls"] == calls and policy.client.stats()["cache_hits"] > 0
    policy.close()


def test_constrained_choice_rescues_free_text(server):
    policy = make_llm_policy(_spec(server), max_tokens=16)
    spy = Spy(policy.client)
    policy.client = spy
    policy.start(3)
    ctx = _ctx_three()
    decision = policy.act(ctx)
    assert decision.action in ctx.admissible
    free, constrained = spy.requests  # the random model's free text names no action
    assert free.choice is None and constrained.choice == tuple(ctx.admissible)
    assert constrained.continue_final and constrained.messages[-1]["content"].endswith("Action: ")
    assert decision.tokens_in > 0 and decision.tokens_out > 0


@pytest.mark.parametrize("caps", [frozenset({PROMPT_LOGPROBS, CONTINUE_FINAL}), frozenset()])
def test_fallbacks_without_constrained_decoding_stay_admissible(server, caps):
    policy = make_llm_policy(_spec(server), max_tokens=16, temperature=0.0)
    spy = Spy(policy.client, caps)
    policy.client = spy
    ep = rollout(CheckedToy(), TASK, policy, seed=2, max_steps=4, timeout_s=60)
    assert len(ep.steps) >= 1
    assert all(r.choice is None for r in spy.requests)
    if caps:  # likelihood ranking: one scoring request per admissible action
        assert any(r.prompt_logprobs == 0 for r in spy.requests)


def test_priors_are_a_distribution_and_agree_in_process(server, tiny_model):
    ctx = _ctx_three()
    over_http = make_llm_policy(_spec(server)).priors(ctx)
    in_process = make_llm_policy(f"hf:{tiny_model}").priors(ctx)
    assert set(over_http) == set(ctx.admissible)
    assert sum(over_http.values()) == pytest.approx(1.0) and all(p > 0 for p in over_http.values())
    for action in ctx.admissible:
        assert over_http[action] == pytest.approx(in_process[action], abs=1e-4)


def test_hf_spec_runs_in_process(tiny_model):
    policy = make_llm_policy(f"hf:{tiny_model}", max_tokens=12)
    ep = rollout(CheckedToy(), TASK, policy, seed=5, max_steps=3, timeout_s=60)
    assert len(ep.steps) == 3 and ep.tokens_in > 0
    shipped = pickle.loads(pickle.dumps(policy))  # as Beam ships it to a worker: the model reloads there
    again = rollout(CheckedToy(), TASK, shipped, seed=5, max_steps=3, timeout_s=60)
    assert [s.action for s in again.steps] == [s.action for s in ep.steps]


class Scripted:
    """A backend that answers every chat with one fixed text."""

    capabilities = frozenset()
    model = "scripted"

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        self.calls += 1
        return Response([Choice(self.text, "stop")], Usage(11, 5), self.model)

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_an_admissible_free_text_answer_takes_one_request():
    backend = Scripted("Thought: The key lies here.\nAction: Take  Key.")
    ctx = _ctx(ToyEnvironment(), TaskSpec("corridor-3-0", seed=1))
    assert ctx.admissible == ["go east", "take key"]
    decision = LLMPolicy(backend, None, "scripted").act(ctx)
    assert (decision.action, decision.thought) == ("take key", "The key lies here.")
    assert backend.calls == 1 and (decision.tokens_in, decision.tokens_out) == (11, 5)


def test_messages_follow_the_conversation_format():
    env = ToyEnvironment()
    ctx = _ctx(env)
    history = [
        {"index": i, "observation": f"obs {i}", "action": "go east", "thought": "east" if i else None}
        for i in range(5)
    ]
    ctx = Context(env, ctx.instruction, "now", ["go east", "go west"], history)
    msgs = LLMPolicy(Scripted(""), None, "x", max_history=2).messages(ctx)
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT.format(env="toy")}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"].startswith(f"Task: {ctx.instruction}\n\nobs 3")  # the task opens the window
    assert msgs[2]["content"] == "Thought: east\nAction: go east"
    assert msgs[-1]["content"].startswith("now\n\nAdmissible actions:\n- go east\n- go west")


def test_parse_react_and_matching():
    assert parse_react("Thought: go on\nlonger\nAction: go east") == ("go on\nlonger", "go east")
    assert parse_react("action:  open door  ") == (None, "open door")
    assert parse_react("take key") == (None, "take key")
    assert parse_react("") == (None, "")
    assert match_admissible("Go  East.", ["go east", "go west"]) == "go east"
    assert match_admissible("go north", ["go east"]) is None


@pytest.mark.parametrize(
    "spec, fix",
    [
        ("openai:", "needs a server URL"),
        ("openai:localhost:8000#m", "needs a server URL"),
        ("hf:", "needs a local model directory"),
        ("hf:/no/such/model", "needs a local model directory"),
        ("vllm:/no/such/model", "needs a local model directory"),
        ("gpt:4", "not a model spec"),
    ],
)
def test_malformed_specs_name_the_spec_and_the_fix(spec, fix):
    with pytest.raises(ConfigError) as err:
        make_llm_policy(spec)
    assert spec in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize("caps", [None, frozenset({PROMPT_LOGPROBS, CONTINUE_FINAL})])
def test_every_request_of_an_episode_fits_a_small_context(tiny_model, caps):
    """A 384-token server, long room descriptions and a long history: every request (free text,
    constrained choice or likelihood scoring) fits, and the task and the actions stay in it."""
    with start_server(tiny_model, engine="transformers", max_model_len=384) as small:
        policy = make_llm_policy(_spec(small), max_tokens=48)
        spy = Spy(policy.client, caps)
        policy.client = spy
        env = CheckedToy(max_length=6, wall_text=400)
        ep = rollout(env, TaskSpec("corridor-6-5", seed=1), policy, seed=4, max_steps=10, timeout_s=120)
        window = policy.window
        whole = policy.messages(Context(env, ep.instruction, ep.final_observation, ["go east"]))
        fitted = [window.count(r.messages) + r.max_tokens for r in spy.requests]
    assert len(ep.steps) == 10 or ep.stop_reason == "done"
    assert window.size == 384 and window.count(whole) > 384  # unfitted, the prompt would not fit
    assert max(fitted) <= 384
    for request in spy.requests:
        users = [m["content"] for m in request.messages if m["role"] == "user"]
        assert users[0].startswith("Task: Take the key and open the door")
        assert "Admissible actions:" in users[-1] and "Answer in two lines" in users[-1]
