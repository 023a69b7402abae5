"""Score candidate continuations by their log-likelihood (prompt logprobs): ranks admissible
actions for policies and gives a judge its P(yes) without sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trajforge.inference.client import Backend, ChatRequest, InferenceError, Response, Usage
from trajforge.inference.context import ContextWindow, framing
from trajforge.schemas.errors import reason_code

# One question: (conversation, assistant prefix, candidate continuations).
Question = tuple[list[dict[str, str]], str, list[str]]
# A question's result as plain data (it crosses Beam's shuffles): {"scores", "tokens_in",
# "tokens_out"}, or {"error": "Type: message", "reason": its code (http_503, timeout, ...)} when a
# request failed.
Scored = dict[str, Any]


def candidate_requests(model: str | None, question: Question) -> list[ChatRequest]:
    """One request per candidate: the conversation continued by prefix + candidate, asking for
    the prompt's own logprobs and a single generated token."""
    msgs, prefix, candidates = question
    return [
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


def score_candidates(
    client: Backend,
    model: str | None,
    msgs: list[dict[str, str]],
    prefix: str,
    candidates: list[str],
    window: ContextWindow | None = None,
) -> tuple[list[float], Usage]:
    """log P(candidate | conversation, assistant prefix) for each candidate, up to a constant
    shared by all (see `candidate_scores`)."""
    [result] = score_many(client, model, [(msgs, prefix, candidates)], concurrency=8, window=window)
    if isinstance(result, Exception):
        raise result
    return result


def score_many(
    client: Backend,
    model: str | None,
    questions: Sequence[Question],
    *,
    concurrency: int = 64,
    window: ContextWindow | None = None,
) -> list[tuple[list[float], Usage] | Exception]:
    """`score_candidates` for many questions, their requests all in one pool of `concurrency`
    threads, so a model server always has work; a question whose request failed gets its error.
    Each conversation is fitted to the client's context window (`window`: the caller's, else
    one asked from the client) with room for its longest candidate, its task and question kept
    (`inference.context.framing`)."""
    window = window or ContextWindow(client)
    fitted: list[Question | InferenceError] = []
    for msgs, prefix, candidates in questions:
        longest = max(candidates, key=lambda c: len(c.encode()), default="")
        try:
            head, tail = framing(msgs)
            answer = {"role": "assistant", "content": prefix + longest}
            msgs = window.fit(msgs, 1, suffix=[answer], keep_head=head, keep_tail=tail)
        except InferenceError as exc:  # context_overflow: this question fails
            fitted.append(exc)
            continue
        fitted.append((msgs, prefix, candidates))
    requests = [[] if isinstance(q, Exception) else candidate_requests(model, q) for q in fitted]
    flat = [r for rs in requests for r in rs]

    def ask(request: ChatRequest) -> Response | Exception:
        try:
            return client.chat(request)
        except Exception as exc:  # noqa: BLE001 - the question fails, not the batch
            return exc

    with ThreadPoolExecutor(max(1, min(concurrency, len(flat)))) as pool:
        answers = iter(list(pool.map(ask, flat)))
    results: list[tuple[list[float], Usage] | Exception] = []
    for question, rs in zip(fitted, requests, strict=True):
        if isinstance(question, Exception):
            results.append(question)
            continue
        responses = [next(answers) for _ in rs]
        errors = [r for r in responses if isinstance(r, Exception)]
        # The root cause first: an open breaker only says that an earlier request failed.
        errors.sort(key=lambda e: getattr(e, "reason", None) == "circuit_open")
        results.append(errors[0] if errors else _scores(responses))  # type: ignore[arg-type]
    return results


def _scores(responses: list[Response]) -> tuple[list[float], Usage] | Exception:
    """One question's scores and what its requests cost, or why they cannot be scored."""
    try:
        return candidate_scores(responses), sum((r.usage for r in responses), Usage())
    except ValueError as exc:
        return exc


def as_scored(result: tuple[list[float], Usage] | Exception) -> Scored:
    """A `score_many` result as plain data."""
    if isinstance(result, Exception):
        return {"error": f"{type(result).__name__}: {result}"[:400], "reason": reason_code(result)}
    scores, usage = result
    return {"scores": scores, "tokens_in": usage.prompt_tokens, "tokens_out": usage.completion_tokens}


def scored_from_responses(responses: list[Response]) -> Scored:
    """The answers to one question's candidate requests as plain data."""
    return as_scored(_scores(responses))


def candidate_scores(responses: list[Response]) -> list[float]:
    """Sum of each candidate's prompt logprobs after the tokens all candidates share."""
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
