"""What every model access point takes and gives: chat and completion requests, responses with
their token log-probabilities and usage, the capabilities a backend may offer, and the `Backend`
protocol itself. A backend raises `InferenceError` (schemas/errors.py) when a call fails."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# What a backend can do beyond plain generation; callers check before relying on it.
CHOICE = "choice"  # constrained decoding to one of a list of strings
JSON_SCHEMA = "json_schema"  # constrained decoding to a JSON schema
PROMPT_LOGPROBS = "prompt_logprobs"  # log-probabilities of the prompt's own tokens
CONTINUE_FINAL = "continue_final"  # chat: go on from a final assistant message's prefix
VLLM_CAPABILITIES = frozenset({CHOICE, JSON_SCHEMA, PROMPT_LOGPROBS, CONTINUE_FINAL})


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SamplingParams:
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
class ChatRequest(SamplingParams):
    messages: list[dict[str, str]]
    # The last message is an assistant prefix the model goes on from (no new turn is opened).
    continue_final: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class CompletionRequest(SamplingParams):
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
