"""A policy that asks a language model for the next action, ReAct style.

Each step renders the instruction, the history and the current observation as chat messages
(`schemas.conversation.messages`, the export's rendering too), the admissible actions ending each
user turn that kept them (always the last), and asks for "Thought: ...\nAction: ...".
The action is always admissible:

1. the free-text answer's action, when it names an admissible action (case and spacing aside);
2. else a constrained request (`choice` = the admissible actions) going on from the thought,
   where the backend supports it (vLLM, the CPU server);
3. else the admissible action with the highest log-likelihood after the thought, scored from
   prompt logprobs;
4. else the admissible action closest in spelling to what the model wrote.

Every request is fitted to the model's context window (`inference.context`): the oldest
history goes first, then observations are shortened; the task and the admissible actions stay.

`priors(ctx)` gives MCTS P(action) over the admissible actions: a softmax of their
log-likelihoods. Every request is seeded from `start(seed)`, so episodes are reproducible and a
resumed run finds its requests in the cache.
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable
from typing import Any

from trajforge.inference.client import (
    CHOICE,
    CONTINUE_FINAL,
    PROMPT_LOGPROBS,
    Backend,
    ChatRequest,
    Usage,
)
from trajforge.inference.context import ContextWindow
from trajforge.inference.scoring import score_candidates, softmax
from trajforge.inference.specs import ClientOptions, reliable_client
from trajforge.schemas.conversation import actions_block
from trajforge.schemas.conversation import messages as conversation_messages
from trajforge.synthesizers.policies import Context, Decision, sample

_ACTION = re.compile(r"^\s*Action\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(
    r"Thought\s*:\s*(.*?)\s*(?=^\s*Action\s*:|\Z)", re.IGNORECASE | re.MULTILINE | re.DOTALL
)


def parse_react(text: str) -> tuple[str | None, str]:
    """(thought, action) from "Thought: ...\nAction: ..."; a text with no 'Action:' line is
    taken as the action itself."""
    thought_match = _THOUGHT.search(text)
    thought = thought_match.group(1).strip() if thought_match else None
    action_match = _ACTION.search(text)
    if action_match:
        return thought or None, action_match.group(1).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return thought or None, lines[-1].strip() if lines else ""


def match_admissible(action: str, admissible: list[str]) -> str | None:
    def norm(s: str) -> str:
        return " ".join(s.lower().strip(" .'\"`").split())

    by_norm = {norm(a): a for a in admissible}
    return action if action in admissible else by_norm.get(norm(action))


class LLMPolicy:
    """See the module docstring. `client` is any Backend, usually a ReliableClient."""

    reads_env_state = False

    def __init__(
        self,
        client: Backend,
        model: str | None,
        spec: str,
        *,
        temperature: float = 0.7,
        max_tokens: int = 128,
        max_history: int = 12,
        context_tokens: int | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.spec = spec
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_history = max_history  # steps of history shown: bounds the prompt's length
        self.window = ContextWindow(client, context_tokens)  # and so does the model's context
        self._on_close = on_close
        self._rng = random.Random(0)

    def start(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def close(self) -> None:
        self.client.close()
        if self._on_close:
            self._on_close()

    # -- prompting --------------------------------------------------------------------------------
    def messages(self, ctx: Context) -> list[dict[str, str]]:
        history = list(ctx.history)[-self.max_history :] if self.max_history else []
        # Each turn as the export renders it (conversation.user_text): steps that kept their
        # admissible actions show them, the current one always.
        current = {"index": len(ctx.history), "observation": ctx.observation, "admissible": ctx.admissible}
        steps = [*history, current]
        offset = int(steps[0]["index"]) if steps else 0
        # Reindex so the first shown step opens with the task, as in schemas.conversation.
        steps = [{**s, "index": int(s["index"]) - offset} for s in steps]
        env_name = getattr(ctx.env, "name", "environment")
        return conversation_messages(env_name, ctx.instruction, steps, upto=len(steps) - 1)

    def _fit(
        self,
        msgs: list[dict[str, str]],
        admissible: list[str],
        reserve: int,
        suffix: list[dict] | None = None,
    ) -> list[dict[str, str]]:
        """`msgs` fitted to the context with `reserve` tokens left for the answer, the task (the
        first user turn's first paragraph) and the admissible actions kept whole."""
        block = actions_block(admissible)
        tail = len(block) if msgs and msgs[-1]["content"].endswith(block) else 0
        first = next((m["content"] for m in msgs if m["role"] == "user"), "")
        head = first.find("\n\n") + 2 if first.startswith("Task: ") and "\n\n" in first else 0
        return self.window.fit(msgs, reserve, suffix=suffix or [], keep_head=head, keep_tail=tail)

    def _request(self, messages: list[dict[str, str]], **params: Any) -> ChatRequest:
        params.setdefault("temperature", self.temperature)
        params.setdefault("max_tokens", self.max_tokens)
        return ChatRequest(messages, model=self.model, seed=self._rng.randrange(2**31), **params)

    # -- acting -----------------------------------------------------------------------------------
    def act(self, ctx: Context) -> Decision:
        if not ctx.admissible:
            raise ValueError("no admissible action to choose from")
        msgs = self.messages(ctx)
        first = self.client.chat(self._request(self._fit(msgs, ctx.admissible, self.max_tokens)))
        usage = first.usage
        thought, said = parse_react(first.text)
        action = match_admissible(said, ctx.admissible)
        if action is None:
            action, extra = self._admissible_action(msgs, thought, said, ctx.admissible)
            usage += extra
        return Decision(action, thought, usage.prompt_tokens, usage.completion_tokens)

    def _admissible_action(
        self, msgs: list[dict[str, str]], thought: str | None, said: str, admissible: list[str]
    ) -> tuple[str, Usage]:
        caps = self.client.capabilities
        prefix = f"Thought: {thought}\nAction: " if thought else "Action: "
        if CHOICE in caps:
            longest = max(len(a) for a in admissible)
            if CONTINUE_FINAL in caps:
                answer = {"role": "assistant", "content": prefix}
                req = self._request(
                    [*self._fit(msgs, admissible, longest + 8, [answer]), answer],
                    continue_final=True,
                    choice=tuple(admissible),
                    max_tokens=longest + 8,
                )
            else:
                fitted = self._fit(msgs, admissible, longest + 8)
                req = self._request(fitted, choice=tuple(admissible), max_tokens=longest + 8)
            response = self.client.chat(req)
            return response.text, response.usage
        if {PROMPT_LOGPROBS, CONTINUE_FINAL} <= caps:
            scores, usage = self.loglikelihoods(msgs, prefix, admissible)
            return _sample(admissible, scores, self.temperature, self._rng), usage
        closest = difflib.get_close_matches(said, admissible, n=1, cutoff=0.0)
        return (closest[0] if closest else self._rng.choice(admissible)), Usage()

    # -- scoring ----------------------------------------------------------------------------------
    def loglikelihoods(
        self, msgs: list[dict[str, str]], prefix: str, candidates: list[str]
    ) -> tuple[list[float], Usage]:
        """log P(candidate | conversation, assistant prefix), up to a shared constant."""
        longest = max(candidates, key=lambda c: len(c.encode()), default="")
        msgs = self._fit(msgs, candidates, 1, [{"role": "assistant", "content": prefix + longest}])
        return score_candidates(self.client, self.model, msgs, prefix, candidates, self.window)

    def priors(self, ctx: Context) -> dict[str, float]:
        """P(action) for MCTS: softmax of each admissible action's log-likelihood; {} (uniform)
        when the backend cannot score."""
        if not ctx.admissible or not {PROMPT_LOGPROBS, CONTINUE_FINAL} <= self.client.capabilities:
            return {}
        scores, _ = self.loglikelihoods(self.messages(ctx), "Action: ", list(ctx.admissible))
        return dict(zip(ctx.admissible, softmax(scores), strict=True))


def _sample(candidates: list[str], scores: list[float], temperature: float, rng: random.Random) -> str:
    if temperature == 0:
        return candidates[max(range(len(scores)), key=lambda i: scores[i])]
    return sample(dict(zip(candidates, softmax(scores, temperature), strict=True)), rng)


# -- specs ----------------------------------------------------------------------------------------
def make_llm_policy(spec: str, **options: Any) -> LLMPolicy:
    """A policy for `openai:URL[#model]`, `hf:PATH` or `vllm:PATH`. Model calls go through a
    ReliableClient configured by the options that are `ClientOptions` (an on-disk cache under
    `cache_dir` when given, a per-request timeout, prices, `api_key_env`, `revision`); the rest
    go to LLMPolicy (temperature, max_tokens, max_history, context_tokens). Policies of one spec
    in a process share its model: one loaded hf: model, one vllm: server per machine, one breaker."""
    client_options, policy_options = ClientOptions.split(options)
    client, on_close = reliable_client(spec, client_options)
    return LLMPolicy(client, client.backend.model, spec, on_close=on_close, **policy_options)
