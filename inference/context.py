"""Prompts that fit the model's context window.

The window comes from `model.context_tokens` (config) or the server (`max_model_len` in vLLM's
`/v1/models`); tokens are counted by the server's tokenizer (`/tokenize`, chat template
included) where offered, else estimated from above. The prompts of policies, critics and judges
go through `fit_messages` (all but the judge's on Beam's own vLLM handler, which holds no client
to count with): it drops the oldest history first (the system message, the first exchange, which
carries the task, and the last message stay), then shortens observations, oldest first and the
last one last, with a visible marker. What cannot fit even so fails its item with the reason
`context_overflow`, as a server's "maximum context length" refusal does.

    window = ContextWindow(client)                      # any Backend, a ReliableClient too
    messages = window.fit(messages, reserve=max_tokens)  # prompt + reserve + margin <= window
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from trajforge.schemas.errors import InferenceError

Messages = list[dict[str, str]]
MARKER = "[... {n} characters cut ...]"
SAFETY_MARGIN = 16  # tokens kept free: the tokenizer a server uses may differ from the count
# Upper bound of the tokens of a message: a byte-level BPE spends at most one token per UTF-8
# byte of text (the tiny test tokenizer spends 0.62 per byte of a TextWorld page, GPT-style
# tokenizers ~0.25), plus what a chat template wraps around each message (role markers: 4-8 tokens
# in Llama 3, Qwen and the tiny template) and once around the conversation (BOS, a generation
# prompt, a default system header such as Llama 3.1's date lines: under 48).
PER_MESSAGE_TOKENS = 8
PER_PROMPT_TOKENS = 48
MIN_KEPT_CHARS = 64  # a shortened observation keeps at least this much of its text
_CACHE_SIZE = 4096


def overflow(message: str) -> InferenceError:
    return InferenceError(message, reason="context_overflow", retryable=False)


def shorten(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its head and tail around a marker
    saying how much was cut (the marker comes on top of `limit`)."""
    if len(text) <= limit:
        return text
    head = (limit + 1) // 2
    tail = limit - head
    return text[:head] + MARKER.format(n=len(text) - limit) + (text[len(text) - tail :] if tail else "")


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """A count that never undercounts for a byte-level tokenizer (see PER_MESSAGE_TOKENS)."""
    return PER_PROMPT_TOKENS + sum(
        len(str(m.get("content", "")).encode()) + PER_MESSAGE_TOKENS for m in messages
    )


def fit_messages(
    messages: Messages,
    budget: int,
    count: Callable[[Messages], int],
    *,
    keep_head: int = 0,
    keep_tail: int = 0,
) -> Messages:
    """The conversation cut down until `count` of it is at most `budget` tokens.

    1. Whole turns (a user message and the reply after it) go, oldest first; leading system
       messages, the first user message and its reply, and the last message stay. The first
       kept turn after the gap says how many steps were cut.
    2. User messages are shortened (`shorten`), oldest first, the last one last; the first
       `keep_head` characters of the first user message (e.g. the task) and the last `keep_tail`
       characters of the last message (e.g. the admissible actions) are never cut.
    Raises InferenceError(reason='context_overflow') when even that does not fit."""
    msgs = [dict(m) for m in messages]
    if count(msgs) <= budget:
        return msgs
    head = _head_length(msgs)
    dropped = 0
    while count(msgs) > budget and len(msgs) - head >= 3:  # a whole turn besides the last message
        del msgs[head : head + 2]
        dropped += 1
        note = f"[... {dropped} earlier step{'s' if dropped > 1 else ''} cut ...]\n\n"
        msgs[head] = {**msgs[head], "content": note + msgs[head]["content"]}
    users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    first = users[0] if users else -1
    for i in [*(u for u in users if u != len(msgs) - 1), len(msgs) - 1]:
        if count(msgs) <= budget:
            return msgs
        head_kept = keep_head if i == first else 0
        tail_kept = keep_tail if i == len(msgs) - 1 else 0
        _shorten_to_fit(msgs, i, head_kept, tail_kept, budget, count)
    total = count(msgs)
    if total > budget:
        raise overflow(
            f"the prompt needs {total} tokens even with its history dropped and its observations "
            f"shortened, over the {budget} the model's context leaves for it; raise the model's "
            "context (vLLM --max-model-len) or lower model.max_tokens"
        )
    return msgs


def framing(messages: Sequence[dict[str, str]], longest: int = 500) -> tuple[int, int]:
    """(keep_head, keep_tail) for a prompt framed by a task and a question: the first paragraph
    of the first user message and the last paragraph of the last message, each when short."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users or not messages:
        return 0, 0
    first, last = users[0], messages[-1]["content"]
    head = first.find("\n\n") + 2 if "\n\n" in first else 0
    tail = len(last) - last.rfind("\n\n") if "\n\n" in last else 0
    return (head if head <= longest else 0), (tail if tail <= longest else 0)


def _head_length(msgs: Messages) -> int:
    """Leading system messages, the first user message and the reply after it."""
    i = 0
    while i < len(msgs) and msgs[i].get("role") == "system":
        i += 1
    return min(i + 2, len(msgs))


def _shorten_to_fit(
    msgs: Messages, i: int, keep_head: int, keep_tail: int, budget: int, count: Callable
) -> None:
    """Shorten message i's text (but its first `keep_head` and last `keep_tail` characters) as
    little as fits, found by bisection over the characters kept; as much as allowed when
    nothing fits."""
    content = msgs[i]["content"]
    keep_head = min(keep_head, len(content))
    keep_tail = min(keep_tail, len(content) - keep_head)
    head, tail = content[:keep_head], content[len(content) - keep_tail :]
    body = content[keep_head : len(content) - keep_tail]

    def with_limit(limit: int) -> Messages:
        return [*msgs[:i], {**msgs[i], "content": head + shorten(body, limit) + tail}, *msgs[i + 1 :]]

    lo, hi = min(MIN_KEPT_CHARS, len(body)), len(body)  # count(lo) is tried first, hi is too long
    if lo >= hi or count(with_limit(lo)) > budget:
        msgs[i] = with_limit(lo)[i]
        return
    step = max(16, hi // 64)  # a few characters more or less do not matter
    while hi - lo > step:
        mid = (lo + hi) // 2
        if count(with_limit(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    msgs[i] = with_limit(lo)[i]


class ContextWindow:
    """The context window of one model client and a token counter for its prompts.

    `tokens` (config `model.context_tokens`) overrides what the server reports. Token counts come
    from the backend's `tokenize` (the server's `/tokenize`, or the local tokenizer), cached per
    prompt; a backend that offers none, or a count that fails, falls back to `estimate_tokens`.
    A window that is unknown (a server that does not report it, and no config) fits nothing: the
    server's own refusal then fails the item as `context_overflow`."""

    def __init__(self, client: Any, tokens: int | None = None, margin: int = SAFETY_MARGIN) -> None:
        self.backend = getattr(client, "backend", client)  # a ReliableClient's backend
        self.tokens = tokens
        self.margin = margin
        self._size: int | None = tokens
        self._asked = tokens is not None
        self._server_counts = callable(getattr(self.backend, "tokenize", None))
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # Beam ships policies to workers
        return {**self.__dict__, "_lock": None, "_counts": OrderedDict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def size(self) -> int | None:
        if not self._asked:
            info = getattr(self.backend, "model_info", None)
            try:
                found = info().get("max_model_len") if callable(info) else None
            except InferenceError:
                return None  # the server is unreachable now: its requests fail on their own
            self._size, self._asked = (int(found) if found else None), True
        return self._size

    def count(self, messages: Sequence[dict[str, str]]) -> int:
        if not self._server_counts:
            return estimate_tokens(messages)
        key = hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        try:
            found = int(self.backend.tokenize(list(messages)))
        except InferenceError as exc:
            if exc.reason in ("http_404", "http_405", "unsupported"):
                self._server_counts = False  # not offered: estimate from now on
            return estimate_tokens(messages)
        with self._lock:
            self._counts[key] = found
            while len(self._counts) > _CACHE_SIZE:
                self._counts.popitem(last=False)
        return found

    def fit(
        self,
        messages: Messages,
        reserve: int,
        *,
        suffix: Sequence[dict[str, str]] = (),
        keep_head: int = 0,
        keep_tail: int = 0,
    ) -> Messages:
        """`messages` cut down so that they, then `suffix` (kept whole, e.g. an assistant
        prefix), plus `reserve` tokens (the completion) and the margin fit the window; see
        `fit_messages` for `keep_head` and `keep_tail`."""
        size = self.size
        if size is None:
            return list(messages)
        budget = size - reserve - self.margin
        if estimate_tokens([*messages, *suffix]) <= budget:
            return list(messages)  # fits even by the upper bound: no need to ask the server
        return fit_messages(
            list(messages),
            budget,
            lambda m: self.count([*m, *suffix]),
            keep_head=keep_head,
            keep_tail=keep_tail,
        )
