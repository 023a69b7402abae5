"""Score candidate continuations by their log-likelihood (prompt logprobs): ranks admissible
actions for policies and gives a judge its P(yes) without sampling."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

from trajforge.inference.client import Backend, ChatRequest, Response, Usage


def score_candidates(
    client: Backend, model: str | None, msgs: list[dict[str, str]], prefix: str, candidates: list[str]
) -> tuple[list[float], Usage]:
    """log P(candidate | conversation, assistant prefix) for each candidate, up to a constant
    shared by all, from the prompt logprobs of the conversation continued by prefix +
    candidate. Tokens at the start that all candidates' prompts share are left out."""
    requests = [
        ChatRequest(
            [*msgs, {"role": "assistant", "content": prefix + c}],
            model=model,
            continue_final=True,
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
        )
        for c in candidates
    ]
    with ThreadPoolExecutor(max_workers=min(8, len(requests))) as pool:
        responses = list(pool.map(client.chat, requests))
    usage = sum((r.usage for r in responses), Usage())
    return _candidate_scores(responses), usage


def _candidate_scores(responses: list[Response]) -> list[float]:
    tokens = [[(t.token, t.logprob) for t in r.prompt_logprobs or [] if t is not None] for r in responses]
    if any(not t for t in tokens):
        raise ValueError("the backend returned no prompt logprobs to score candidates with")
    shared = 0
    while all(len(t) > shared for t in tokens) and len({t[shared][0] for t in tokens}) == 1:
        shared += 1
    return [sum(lp for _, lp in t[shared:]) for t in tokens]


def softmax(scores: list[float], temperature: float = 1.0) -> list[float]:
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]
