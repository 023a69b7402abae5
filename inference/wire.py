"""The OpenAI-compatible wire format as vLLM serves it, both sides: request bodies out of
requests and responses out of JSON bodies for the client (client.py), requests out of bodies and
bodies out of responses for the CPU server (serve.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from trajforge.inference.protocol import (
    ChatRequest,
    Choice,
    CompletionRequest,
    Response,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from trajforge.schemas.errors import InferenceError


def malformed(message: str, payload: Any) -> InferenceError:
    """A body that lacks or mistypes what the protocol promises: worth asking again."""
    return InferenceError(f"{message}: {str(payload)[:200]!r}", reason="malformed", retryable=True)


# -- wire format: requests ------------------------------------------------------------------------
def _common_body(request: SamplingParams, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model or model,
        "max_tokens": request.max_tokens,
        "n": request.n,
        "temperature": request.temperature,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if request.prompt_logprobs is not None:
        body["prompt_logprobs"] = request.prompt_logprobs
    if request.choice is not None:
        body["structured_outputs"] = {"choice": list(request.choice)}
    elif request.json_schema is not None:
        body["structured_outputs"] = {"json": request.json_schema}
    return body


def chat_body(request: ChatRequest, model: str) -> dict[str, Any]:
    body = {"messages": list(request.messages), **_common_body(request, model)}
    if request.logprobs or request.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    if request.continue_final:
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def completion_body(request: CompletionRequest, model: str) -> dict[str, Any]:
    body = {"prompt": request.prompt, **_common_body(request, model)}
    if request.logprobs or request.top_logprobs:
        body["logprobs"] = request.top_logprobs
    if request.echo:
        body["echo"] = True
    return body


# -- wire format: responses -----------------------------------------------------------------------
def parse_response(body: Any, *, chat: bool) -> Response:
    """An OpenAI-style JSON body as a Response; anything missing or mistyped is 'malformed'."""
    try:
        choices = [_parse_choice(c, chat) for c in body["choices"]]
        if not choices:
            raise ValueError("no choices")
        usage = body.get("usage") or {}
        return Response(
            choices=sorted(choices, key=lambda c: c.index),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            model=str(body.get("model", "")),
            prompt_logprobs=_parse_prompt_logprobs(body.get("prompt_logprobs")),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise malformed(f"response lacks or mistypes {exc}", body) from exc


def _parse_choice(data: dict[str, Any], chat: bool) -> Choice:
    text = data["message"]["content"] if chat else data["text"]
    if not isinstance(text, str):
        raise TypeError(f"text is {type(text).__name__}")
    raw = data.get("logprobs")
    logprobs = None
    if raw:
        logprobs = _chat_logprobs(raw) if chat else _completion_logprobs(raw)
    return Choice(text, data.get("finish_reason"), logprobs, int(data.get("index", 0)))


def _chat_logprobs(raw: dict[str, Any]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            t["token"],
            float(t["logprob"]),
            {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []},
        )
        for t in raw["content"] or []
    ]


def _completion_logprobs(raw: dict[str, Any]) -> list[TokenLogprob]:
    tops = raw.get("top_logprobs") or [None] * len(raw["tokens"])
    return [
        TokenLogprob(tok, float(lp), {k: float(v) for k, v in (top or {}).items()})
        for tok, lp, top in zip(raw["tokens"], raw["token_logprobs"], tops, strict=True)
        if lp is not None  # with echo, the prompt's first token has none
    ]


def _parse_prompt_logprobs(raw: list | None) -> list[TokenLogprob | None] | None:
    """vLLM gives per prompt token a dict token_id -> {logprob, rank, decoded_token}; the
    prompt's own token comes first, then the top-k alternatives. `top` keeps all entries."""
    if raw is None:
        return None
    out: list[TokenLogprob | None] = []
    for entry in raw:
        if not entry:
            out.append(None)
            continue
        alts = [(str(v.get("decoded_token", k)), float(v["logprob"])) for k, v in entry.items()]
        out.append(TokenLogprob(alts[0][0], alts[0][1], dict(alts)))
    return out


# -- wire format: the server's side ---------------------------------------------------------------
def _request_params(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    allowed = {"choice"}
    structured = body.get("structured_outputs") or {}
    if set(structured) - allowed - {"json"}:
        raise ValueError(f"structured_outputs {sorted(set(structured) - allowed)} not supported; use choice")
    stop = body.get("stop") or ()
    if chat:
        logprobs, top = bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
    else:
        raw = body.get("logprobs")
        logprobs, top = raw is not None, int(raw or 0)
    return {
        "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
        "n": int(body.get("n") or 1),
        "temperature": float(body.get("temperature", 1.0)),
        "seed": None if body.get("seed") is None else int(body["seed"]),
        "stop": (stop,) if isinstance(stop, str) else tuple(stop),
        "logprobs": logprobs,
        "top_logprobs": top,
        "prompt_logprobs": None if body.get("prompt_logprobs") is None else int(body["prompt_logprobs"]),
        "choice": structured.get("choice"),
        "json_schema": structured.get("json"),
        "model": body.get("model"),
    }


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError("messages must be a list of {role, content} objects")
    return ChatRequest(
        messages, continue_final=bool(body.get("continue_final_message")), **_request_params(body, True)
    )


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError("prompt must be one string")
    return CompletionRequest(prompt, echo=bool(body.get("echo")), **_request_params(body, False))


def response_body(response: Response, *, chat: bool) -> dict[str, Any]:
    choices = []
    for c in response.choices:
        item: dict[str, Any] = {"index": c.index, "finish_reason": c.finish_reason}
        if chat:
            item["message"] = {"role": "assistant", "content": c.text}
            item["logprobs"] = (
                None if c.logprobs is None else {"content": [_chat_token(t) for t in c.logprobs]}
            )
        else:
            item["text"] = c.text
            item["logprobs"] = None if c.logprobs is None else _completion_logprobs_body(c.logprobs)
        choices.append(item)
    usage = response.usage
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
        "prompt_logprobs": None
        if response.prompt_logprobs is None
        else [_prompt_token(t) for t in response.prompt_logprobs],
    }


def _chat_token(t: TokenLogprob) -> dict[str, Any]:
    tops = [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in t.top.items()]
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": tops}


def _completion_logprobs_body(tokens: list[TokenLogprob]) -> dict[str, Any]:
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) or None for t in tokens],
        "text_offset": offsets,
    }


def _prompt_token(t: TokenLogprob | None) -> dict[str, Any] | None:
    """vLLM keys these by token id; this server keys them by the token's text, the prompt's own
    token first (clients read `decoded_token`)."""
    if t is None:
        return None
    ranked = list(t.top)
    own_rank = ranked.index(t.token) + 1 if t.token in ranked else len(ranked) + 1  # at least this
    out = {t.token: {"logprob": t.logprob, "rank": own_rank, "decoded_token": t.token}}
    for rank, (k, v) in enumerate(t.top.items(), 1):
        out.setdefault(k, {"logprob": v, "rank": rank, "decoded_token": k})
    return out
