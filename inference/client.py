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
from dataclasses import dataclass
from typing import Any

# The interface and the wire format live in protocol.py and wire.py; these names have always
# been imported from here, and still are.
from trajforge.inference.protocol import CHOICE as CHOICE
from trajforge.inference.protocol import CONTINUE_FINAL as CONTINUE_FINAL
from trajforge.inference.protocol import JSON_SCHEMA as JSON_SCHEMA
from trajforge.inference.protocol import PROMPT_LOGPROBS as PROMPT_LOGPROBS
from trajforge.inference.protocol import VLLM_CAPABILITIES as VLLM_CAPABILITIES
from trajforge.inference.protocol import Backend as Backend
from trajforge.inference.protocol import ChatRequest as ChatRequest
from trajforge.inference.protocol import Choice as Choice
from trajforge.inference.protocol import CompletionRequest as CompletionRequest
from trajforge.inference.protocol import Request as Request
from trajforge.inference.protocol import Response as Response
from trajforge.inference.protocol import TokenLogprob as TokenLogprob
from trajforge.inference.protocol import Usage as Usage
from trajforge.inference.protocol import send as send
from trajforge.inference.wire import chat_body, completion_body, malformed
from trajforge.inference.wire import parse_response as parse_response
from trajforge.schemas.errors import InferenceError as InferenceError

MAX_RESPONSE_BYTES = 16 << 20  # a bigger answer is a broken server, not a model's reply
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"  # sent as a bearer key when set and no other is named


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
                raise malformed(f"{self.base_url}/models lists no model", body) from exc
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
            raise malformed(f"{self.base_url}/models lists no models", body)
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
            raise malformed(f"{root.base_url}/tokenize gave no count", body) from exc

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
            raise malformed(f"{url} answered with invalid JSON", data[:300]) from exc

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
