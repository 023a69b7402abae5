"""Usage and cost accounting of a client's model calls."""

from __future__ import annotations

from collections import Counter
from typing import Any

from trajforge.inference.locked import Locked
from trajforge.inference.protocol import Usage


class UsageMeter(Locked):
    """Tokens per call and summed; cost from prices in USD per million tokens. Cached answers
    are counted apart (they cost nothing again), with what they cost when they were paid."""

    def __init__(self, price_in_per_m: float = 0.0, price_out_per_m: float = 0.0) -> None:
        super().__init__()
        self.price_in_per_m = price_in_per_m
        self.price_out_per_m = price_out_per_m
        self.calls = 0
        self.usage = Usage()
        self.cached_calls = 0
        self.cached_usage = Usage()
        self.cached_cost_usd = 0.0
        self.retries = 0
        self.failures: Counter[str] = Counter()

    def record(self, usage: Usage, *, cached: bool, paid_usd: float | None = None) -> None:
        """`paid_usd`: a cached answer's original cost (default: its tokens at today's prices)."""
        with self._lock:
            if cached:
                self.cached_calls += 1
                self.cached_usage += usage
                self.cached_cost_usd += self.cost_of(usage) if paid_usd is None else paid_usd
            else:
                self.calls += 1
                self.usage += usage

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def cost_of(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.price_in_per_m + usage.completion_tokens * self.price_out_per_m
        ) / 1e6

    @property
    def cost_usd(self) -> float:
        return self.cost_of(self.usage)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "tokens_in": self.usage.prompt_tokens,
                "tokens_out": self.usage.completion_tokens,
                "cost_usd": self.cost_usd,
                "cached_calls": self.cached_calls,
                "cached_tokens_in": self.cached_usage.prompt_tokens,
                "cached_tokens_out": self.cached_usage.completion_tokens,
                "cached_cost_usd": self.cached_cost_usd,
                "retries": self.retries,
                "failures": dict(self.failures),
            }
