"""One interface for chat and completion requests, and a backend that speaks the
OpenAI-compatible API as `vllm serve` serves it.

A backend answers `chat(ChatRequest)` and `complete(CompletionRequest)` with a `Response`, or
raises `InferenceError` whose `reason` is a short code (for drop counts) and whose
`retryable` says whether asking again may help. Retries, caching, circuit breaking and usage
accounting live in one layer on top of any backend: `inference.reliability.ReliableClient`.
"""

from __future__ import annotations

import copy
import email.utils
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from trajforge.schemas.errors import InferenceError

# What a backend can do beyond plain generation; callers check before relying on it.
CHOICE = "choice"  # constrained decoding to one of a list of strings
JSON_SCHEMA = "json_schema"  # constrained decoding to a JSON schema
PROMPT_LOGPROBS = "prompt_logprobs"  # log-probabilities of the prompt's own tokens
CONTINUE_FINAL = "continue_final"  # chat: go on from a final assistant message's prefix
VLLM_CAPABILITIES = frozenset({CHOICE, JSON_SCHEMA, PROMPT_LOGPROBS, CONTINUE_FINAL})
MAX_RESPONSE_BYTES = 16 << 20  # a bigger answer is a broken server, not a model's reply
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"  # sent as a bearer key when set and no other is named


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Params:
    """Sampling and constraint parameters shared by chat and completion requests."""

    max_tokens: int = 256  # always set: constrained decoding can loop without a bound
    n: int = 1
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # log-probability of each generated token
    top_logprobs: int = 0  # and of the k most likely alternatives at each position
    prompt_logprobs: int | None = None  # k alternatives per prompt token (0: the token alone)
    choice: tuple[str, ...] | None = None  # the answer is exactly one of these strings
    json_schema: dict[str, Any] | None = None  # the answer is JSON valid under this schema
    model: str | None = None  # None: the backend's model

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        problems = [
            "max_tokens must be >= 1" if self.max_tokens < 1 else "",
            "n must be >= 1" if self.n < 1 else "",
            "temperature must be >= 0" if self.temperature < 0 else "",
            "top_logprobs must be >= 0" if self.top_logprobs < 0 else "",
            "choice and json_schema exclude each other" if self.choice and self.json_schema else "",
            "choice needs at least one non-empty string"
            if self.choice is not None and (not self.choice or not all(self.choice))
            else "",
        ]
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))

    def params(self) -> dict[str, Any]:
        """Everything but the input, as plain data (used for cache keys)."""
        data = asdict(self)
        for key in ("messages", "prompt"):
            data.pop(key, None)
        return data


@dataclass(frozen=True)
class ChatRequest(_Params):
    messages: list[dict[str, str]]
    # The last message is an assistant prefix the model goes on from (no new turn is opened).
    continue_final: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class CompletionRequest(_Params):
    prompt: str
    echo: bool = field(default=False, kw_only=True)


Request = ChatRequest | CompletionRequest


# -- responses ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    # The k most likely tokens here. Keyed by text, as OpenAI's completions do: tokens that decode
    # alike (fragments of one UTF-8 character show as U+FFFD) share one entry.
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    index: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True)
class Response:
    choices: list[Choice]
    usage: Usage
    model: str
    # One entry per prompt token (the first is None: nothing precedes it).
    prompt_logprobs: list[TokenLogprob | None] | None = None
    cached: bool = False  # served from the request cache, not the model

    @property
    def text(self) -> str:
        return self.choices[0].text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Response:
        def tokens(items: list | None) -> list | None:
            return None if items is None else [None if t is None else TokenLogprob(**t) for t in items]

        choices = [Choice(**{**c, "logprobs": tokens(c.get("logprobs"))}) for c in data["choices"]]
        return cls(
            choices=choices,
            usage=Usage(**data["usage"]),
            model=data["model"],
            prompt_logprobs=tokens(data.get("prompt_logprobs")),
            cached=bool(data.get("cached", False)),
        )


class Backend(Protocol):
    """What every model access point offers; `ReliableClient` is one too."""

    @property
    def model(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response: ...

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response: ...

    def close(self) -> None: ...


def send(backend: Backend, request: Request, *, timeout_s: float | None = None) -> Response:
    if isinstance(request, ChatRequest):
        return backend.chat(request, timeout_s=timeout_s)
    return backend.complete(request, timeout_s=timeout_s)


# -- the OpenAI-compatible HTTP backend -----------------------------------------------------------
class OpenAIHTTPBackend:
    """Speaks `/v1/chat/completions` and `/v1/completions` of an OpenAI-compatible server with
    vLLM's extensions (`structured_outputs`, `prompt_logprobs`, `continue_final_message`).

    `base_url` may end in `/v1` or not. With `model=None` the server's first model is used.
    A plain OpenAI-style server lacks the extensions: pass `capabilities=frozenset()`.
    Picklable: the HTTP connection pool is made again where it is unpickled.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        *,
        capabilities: frozenset[str] = VLLM_CAPABILITIES,
        max_connections: int = 64,
        api_key_env: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self._model = model
        # The key itself is read from the environment of the process that sends (see _api_key), so a
        # pickled backend (a Beam DoFn, a task's parameters) carries the variable's name, never the key.
        self._explicit_key = api_key
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.capabilities = frozenset(capabilities)
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._http: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_http": None}

    def __repr__(self) -> str:
        return f"OpenAIHTTPBackend({self.base_url!r}, {self._model!r})"  # never the key

    @property
    def identity(self) -> str:
        """Which server and model this is: processes share one circuit breaker per identity."""
        return f"openai:{self.base_url}#{self._model or ''}"

    def _api_key(self) -> str | None:
        """The explicit key, else `$api_key_env`, else `$OPENAI_API_KEY` when set."""
        if self._explicit_key:
            return self._explicit_key
        return os.environ.get(self.api_key_env or DEFAULT_API_KEY_ENV) or None

    @property
    def model(self) -> str:
        if self._model is None:
            body = self._request("GET", "/models", None, self.timeout_s)
            try:
                self._model = str(body["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as exc:
                raise _malformed(f"{self.base_url}/models lists no model", body) from exc
        return self._model

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        body = self._request("POST", "/chat/completions", chat_body(request, self.model), timeout_s)
        return parse_response(body, chat=True)

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response:
        body = self._request("POST", "/completions", completion_body(request, self.model), timeout_s)
        return parse_response(body, chat=False)

    def model_info(self) -> dict[str, Any]:
        """The server's entry for this model in `/v1/models` (vLLM's has `max_model_len`)."""
        body = self._request("GET", "/models", None, self.timeout_s)
        entries = body.get("data") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise _malformed(f"{self.base_url}/models lists no models", body)
        return next((e for e in entries if isinstance(e, dict) and e.get("id") == self.model), {})

    def tokenize(self, messages: list[dict[str, str]]) -> int:
        """Tokens of a chat prompt, chat template and generation prompt included, by the server's
        tokenizer: vLLM's `/tokenize`, which it serves at the root, not under /v1."""
        self._client()  # made before the copy, which shares its connection pool
        root = copy.copy(self)
        root.base_url = self.base_url.removesuffix("/v1")
        body = root._request("POST", "/tokenize", {"model": self.model, "messages": messages}, self.timeout_s)
        try:
            return int(body["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(f"{root.base_url}/tokenize gave no count", body) from exc

    def close(self) -> None:
        if self._http is not None:
            self._http.clear()
            self._http = None

    def _client(self) -> Any:
        if self._http is None:
            import urllib3

            headers = {"Content-Type": "application/json"}
            key = self._api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            # urllib3 rather than httpx: a third of the client CPU per request, which is what
            # bounds throughput when hundreds of requests a second are in flight.
            self._http = urllib3.PoolManager(maxsize=self.max_connections, block=True, headers=headers)
        return self._http

    def _request(self, method: str, path: str, body: dict | None, timeout_s: float | None) -> Any:
        import urllib3
        from urllib3.exceptions import EmptyPoolError, HTTPError, NewConnectionError, TimeoutError

        url = self.base_url + path
        seconds = timeout_s if timeout_s is not None else self.timeout_s
        deadline = time.monotonic() + seconds
        try:
            resp = self._client().request(
                method,
                url,
                body=None if body is None else json.dumps(body).encode(),
                timeout=urllib3.Timeout(total=seconds),
                pool_timeout=seconds,  # all connections busy: wait for one, not forever
                retries=False,  # retries are the reliability layer's, in one place
                preload_content=False,  # the body is read below, against the deadline and the size cap
            )
            data = self._read_body(url, resp, deadline, seconds)
        except NewConnectionError as exc:  # before TimeoutError: urllib3 makes it one
            raise InferenceError(f"{url}: cannot connect: {exc}", reason="connect", retryable=True) from exc
        except (TimeoutError, EmptyPoolError) as exc:
            raise InferenceError(
                f"{url}: {type(exc).__name__} after {seconds}s", reason="timeout", retryable=True
            ) from exc
        except (HTTPError, OSError) as exc:  # OSError: the connection broke while the body was read
            raise InferenceError(
                f"{url}: {type(exc).__name__}: {exc}", reason="connect", retryable=True
            ) from exc
        if resp.status >= 400:
            raise _http_error(url, _Answer(resp.status, resp.headers, data))
        try:
            return json.loads(data)
        except ValueError as exc:
            raise _malformed(f"{url} answered with invalid JSON", data[:300]) from exc

    def _read_body(self, url: str, resp: Any, deadline: float, seconds: float) -> bytes:
        """The whole body, or an error once the attempt's wall-clock deadline passes (a server
        trickling bytes resets every per-read timeout) or the body outgrows the size cap."""
        chunks, size = [], 0
        try:
            declared = int(resp.headers.get("content-length") or 0)
            if declared > self.max_response_bytes:
                raise _too_large(url, declared, self.max_response_bytes)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InferenceError(
                        f"{url}: no complete answer within {seconds}s (wall-clock deadline)",
                        reason="timeout",
                        retryable=True,
                    )
                sock = getattr(resp.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(left)  # no single read outlives the deadline either
                try:
                    chunk = resp.read1(1 << 16)
                except TimeoutError as exc:  # socket.timeout
                    raise InferenceError(
                        f"{url}: no complete answer within {seconds}s (wall-clock deadline)",
                        reason="timeout",
                        retryable=True,
                    ) from exc
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _too_large(url, size, self.max_response_bytes)
                chunks.append(chunk)
        except BaseException:
            resp.close()  # the connection holds unread bytes: never reuse it
            resp.release_conn()
            raise
        resp.release_conn()
        return b"".join(chunks)


def _http_error(url: str, resp: Any) -> InferenceError:
    retryable = resp.status == 429 or resp.status >= 500
    text = resp.data.decode(errors="replace")
    detail = text[:300]
    try:
        payload = json.loads(text)
        err = payload.get("error", payload) if isinstance(payload, dict) else payload
        detail = str(err.get("message") or err.get("detail") or err) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    if resp.status == 400 and _TOO_LONG.search(detail):
        return InferenceError(f"{url}: HTTP 400: {detail}", reason="context_overflow", retryable=False)
    return InferenceError(
        f"{url}: HTTP {resp.status}: {detail}",
        reason=f"http_{resp.status}",
        retryable=retryable,
        retry_after_s=parse_retry_after(resp.headers.get("retry-after")),
    )


@dataclass(frozen=True)
class _Answer:
    """A response whose body has been read (against the deadline and the size cap)."""

    status: int
    headers: Any
    data: bytes


def _too_large(url: str, size: int, cap: int) -> InferenceError:
    return InferenceError(
        f"{url}: the response exceeds the cap of {cap} bytes (at least {size})",
        reason="response_too_large",
        retryable=False,
    )


# How vLLM (and OpenAI) refuse a prompt over the model's context: "This model's maximum context
# length is N tokens. However, you requested M tokens ...", "The decoder prompt (length N) is
# longer than the maximum model length of M", "... prompt is too long ...".
_TOO_LONG = re.compile(
    r"maximum (context|model) length|context window|exceeds .{0,30}context|prompt .{0,40}too long",
    re.IGNORECASE,
)


def _malformed(message: str, payload: Any) -> InferenceError:
    return InferenceError(f"{message}: {str(payload)[:200]!r}", reason="malformed", retryable=True)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# -- wire format: requests ------------------------------------------------------------------------
def _common_body(request: _Params, model: str) -> dict[str, Any]:
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
        raise _malformed(f"response lacks or mistypes {exc}", body) from exc


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
