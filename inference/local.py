"""A transformers model on CPU behind the same `Backend` interface as a vLLM server.

`LocalBackend` serves `hf:PATH` policies in-process and is what `inference.serve` exposes over
HTTP when vLLM cannot run. It implements what the project relies on from vLLM: sampling with
seed, n, stop strings and logprobs; prompt logprobs; `continue_final`; and choice-constrained
decoding, done by scoring every choice's log-likelihood given the prompt (reusing the prompt's
KV cache) and taking the best, or sampling by those likelihoods when temperature > 0.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge.inference.protocol import (
    CHOICE,
    CONTINUE_FINAL,
    PROMPT_LOGPROBS,
    ChatRequest,
    Choice,
    CompletionRequest,
    Response,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from trajforge.schemas.errors import InferenceError

LOCAL_CAPABILITIES = frozenset({CHOICE, PROMPT_LOGPROBS, CONTINUE_FINAL})


@dataclass
class _Generated:
    tokens: list[int]
    logprobs: list[TokenLogprob]
    text: str
    finish_reason: str


class LocalBackend:
    """Loads the model lazily (so it pickles as a path) and serialises calls: one model, one
    thread at a time. `timeout_s` is not enforced in-process; `max_tokens` bounds each call."""

    capabilities = LOCAL_CAPABILITIES

    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        *,
        threads: int = 1,
        max_model_len: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_path} holds no model (no config.json)")
        self.name = name or self.model_path.name
        self.threads = threads
        self._max_model_len = max_model_len  # None: the model config's max_position_embeddings
        self._lock = threading.Lock()  # one model call at a time (the model's own lock once loaded)
        self._loaded: tuple[Any, Any] | None = None
        self._token_text: dict[int, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "name": self.name,
            "threads": self.threads,
            "max_model_len": self._max_model_len,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def model(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return f"hf:{self.model_path.resolve()}"

    @property
    def max_model_len(self) -> int:
        if self._max_model_len is not None:
            return self._max_model_len
        return int(getattr(self._load()[1].config, "max_position_embeddings", 2048))

    def model_info(self) -> dict[str, Any]:
        return {"id": self.name, "max_model_len": self.max_model_len}

    def tokenize(self, messages: list[dict[str, str]]) -> int:
        """Tokens of a chat prompt as `chat` renders it, generation prompt included."""
        return len(self.token_ids(messages=messages))

    def token_ids(
        self,
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        add_generation_prompt: bool = True,
        continue_final: bool = False,
    ) -> list[int]:
        """The prompt's tokens as `chat` (messages) or `complete` (prompt) sees them."""
        if messages is not None:
            prompt = self._render(messages, add_generation_prompt and not continue_final, continue_final)
        return self._encode(prompt or "")

    def close(self) -> None:
        self._loaded = None

    def load(self) -> None:
        self._load()

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        prompt = self._render(list(request.messages), not request.continue_final, request.continue_final)
        return self._run(prompt, request, echo=False)

    def _render(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, continue_final: bool
    ) -> str:
        try:
            return self._load()[0].apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final,
            )
        except Exception as exc:  # jinja and template errors: the request is at fault
            raise _bad_request(f"cannot render the chat: {exc}") from exc

    def complete(self, request: CompletionRequest, *, timeout_s: float | None = None) -> Response:
        return self._run(request.prompt, request, echo=request.echo)

    # -- the engine -------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            model = _shared_model(self.model_path.resolve(), self.threads)
            self._lock, self._cache_kw = model.lock, model.cache_kw
            self._loaded = (model.tokenizer, model.model)
        return self._loaded

    def _run(self, prompt: str, request: SamplingParams, *, echo: bool) -> Response:
        if request.json_schema is not None:
            raise InferenceError(
                "json_schema constrained decoding needs vLLM; the CPU server offers choice only",
                reason="unsupported",
                retryable=False,
            )
        tokenizer, model = self._load()
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise _bad_request("the prompt is empty")
        if len(ids) + request.max_tokens > self.max_model_len:  # in vLLM's words
            raise InferenceError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {len(ids) + request.max_tokens} tokens ({len(ids)} in the messages, "
                f"{request.max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                reason="context_overflow",
                retryable=False,
            )
        with self._lock, _inference_mode():
            logits, cache = self._forward(ids, None)
            prompt_lps = self._prompt_logprobs(ids, logits, request.prompt_logprobs)
            rng = _rng(request.seed)
            if request.choice is not None:
                gens = self._choose(logits[0, -1], cache, request, rng)
            else:
                gens = self._sample(logits[0, -1], cache, request, rng)
        prefix = prompt if echo else ""
        choices = [
            Choice(prefix + g.text, g.finish_reason, g.logprobs if _wants_logprobs(request) else None, i)
            for i, g in enumerate(gens)
        ]
        usage = Usage(len(ids), sum(len(g.tokens) for g in gens))
        return Response(choices, usage, request.model or self.name, prompt_lps)

    def _forward(self, ids: Any, cache: Any) -> tuple[Any, Any]:
        import torch

        tensor = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids])
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self._load()[1](input_ids=tensor, use_cache=True, **kwargs)
        return out.logits.float(), out.get("cache") or out.get("past_key_values")

    def _sample(self, last: Any, cache: Any, request: SamplingParams, rng: Any) -> list[_Generated]:
        import torch

        tokenizer, model = self._load()
        n, eos = request.n, _eos_ids(tokenizer, model)
        cache.batch_repeat_interleave(n)
        logits = last.unsqueeze(0).repeat(n, 1)
        gens = [_Generated([], [], "", "") for _ in range(n)]
        for step in range(request.max_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            if request.temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / request.temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=rng).squeeze(1)
            for i, gen in enumerate(gens):
                if not gen.finish_reason:
                    self._append(gen, int(nxt[i]), logp[i], request, eos)
            if all(g.finish_reason for g in gens) or step == request.max_tokens - 1:
                break
            logits, cache = self._forward(nxt.unsqueeze(1), cache)
            logits = logits[:, -1]
        for gen in gens:
            gen.finish_reason = gen.finish_reason or "length"
            gen.text = gen.text or self._decode(gen.tokens)
        return gens

    def _append(self, gen: _Generated, token: int, logp: Any, request: SamplingParams, eos: set[int]) -> None:
        gen.tokens.append(token)
        gen.logprobs.append(self._token_logprob(token, logp, request.top_logprobs))
        if token in eos:
            gen.finish_reason = "stop"  # the eos token counts as generated; decoding drops it
            return
        if request.stop:
            text = self._decode(gen.tokens)
            cut = min((text.find(s) for s in request.stop if s in text), default=-1)
            if cut >= 0:
                gen.text, gen.finish_reason = text[:cut], "stop"

    def _choose(self, last: Any, cache: Any, request: SamplingParams, rng: Any) -> list[_Generated]:
        """Score each choice's log-likelihood after the prompt, in one batch over the shared
        prompt cache; pick the best (temperature 0) or sample by softmax(loglik / T)."""
        scored = self._score_choices(last, cache, list(request.choice or ()), request.top_logprobs)
        totals = [sum(t.logprob for t in lps) for lps in scored]
        picks = [_pick(totals, request.temperature, rng) for _ in range(request.n)]
        choices = list(request.choice or ())
        return [_Generated(self._encode(choices[k]), scored[k], choices[k], "stop") for k in picks]

    def _score_choices(
        self, last: Any, cache: Any, choices: list[str], top_k: int
    ) -> list[list[TokenLogprob]]:
        import torch

        tokenizer, _ = self._load()
        encoded = [self._encode(c) for c in choices]
        if not all(encoded):
            raise _bad_request("a choice encodes to no tokens")
        width = max(len(e) for e in encoded)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Right padding: causal attention keeps every real position blind to the pads after it.
        batch = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
        cache.batch_repeat_interleave(len(encoded))
        logits, _ = self._forward(batch, cache)
        out = []
        for row, tokens in enumerate(encoded):
            steps = [last] + [logits[row, j] for j in range(len(tokens) - 1)]
            out.append(
                [
                    self._token_logprob(tok, torch.log_softmax(step, dim=-1), top_k)
                    for tok, step in zip(tokens, steps, strict=True)
                ]
            )
        return out

    def _prompt_logprobs(
        self, ids: list[int], logits: Any, k: int | None
    ) -> list[TokenLogprob | None] | None:
        import torch

        if k is None:
            return None
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        return [None] + [self._token_logprob(tok, logp[j], k) for j, tok in enumerate(ids[1:])]

    def _token_logprob(self, token: int, logp: Any, top_k: int) -> TokenLogprob:
        top: dict[str, float] = {}
        if top_k:
            values, indices = logp.topk(top_k)
            for v, i in zip(values.tolist(), indices.tolist(), strict=True):
                top.setdefault(self._text_of(i), v)
        return TokenLogprob(self._text_of(token), float(logp[token]), top)

    def _text_of(self, token: int) -> str:
        if token not in self._token_text:
            self._token_text[token] = self._load()[0].decode([token])
        return self._token_text[token]

    def _encode(self, text: str) -> list[int]:
        return list(self._load()[0](text, add_special_tokens=False)["input_ids"])

    def _decode(self, tokens: list[int]) -> str:
        return self._load()[0].decode(tokens, skip_special_tokens=True)


@dataclass
class _Model:
    tokenizer: Any
    model: Any
    cache_kw: str
    lock: threading.Lock  # calls on one model are serialised, whichever backend makes them


_MODELS: dict[tuple[Path, int, str], _Model] = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(path: Path, threads: int) -> _Model:
    """One loaded model per directory (and weights) per process, however many backends (search
    threads) use it; new weights saved into the directory are loaded anew."""
    from trajforge.inference.specs import weights_fingerprint

    key = (path, threads, weights_fingerprint(path))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load_model(path, threads)
        return _MODELS[key]


def _load_model(path: Path, threads: int) -> _Model:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)  # under CPU contention 2 threads can be 100x slower
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return _Model(tokenizer, model, cache_kw, threading.Lock())


def _pick(totals: list[float], temperature: float, rng: Any) -> int:
    if temperature == 0:
        return max(range(len(totals)), key=lambda i: totals[i])
    top = max(totals)
    weights = [math.exp((t - top) / temperature) for t in totals]
    return random.Random(int(_draw(rng))).choices(range(len(totals)), weights=weights)[0]


def _draw(rng: Any) -> int:
    import torch

    return int(torch.randint(0, 2**62, (1,), generator=rng))


def _rng(seed: int | None) -> Any:
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**62))
    return gen


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    found = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def _wants_logprobs(request: SamplingParams) -> bool:
    return request.logprobs or request.top_logprobs > 0


def _bad_request(message: str) -> InferenceError:
    return InferenceError(message, reason="bad_request", retryable=False)


def _inference_mode() -> Any:
    import torch

    return torch.inference_mode()
