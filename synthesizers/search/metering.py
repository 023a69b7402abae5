"""Model usage of a search: what the metered clients of its policy and critic spent."""

from __future__ import annotations

from typing import Any

from trajforge.synthesizers.policies import Policy
from trajforge.synthesizers.search.results import SearchResult
from trajforge.synthesizers.search.settings import Critic


def usage(*users: Any) -> dict[str, Any]:
    """The summed stats of the metered model clients of a policy (and a critic); {} if none."""
    total: dict[str, Any] = {}
    for user in users:
        client = getattr(user, "client", None)
        if client is not None and hasattr(client, "stats"):
            for key, value in client.stats().items():
                if isinstance(value, int | float):  # not e.g. the circuit breaker's state
                    total[key] = total.get(key, 0) + value
    return total


class TokenMeter:
    """Model tokens a policy (and a critic) used since this meter was made (0 without a
    metered client), checked against the budget between simulations and between steps. Tokens
    of cached answers count: a replay spends the budget as the paid original did."""

    def __init__(self, policy: Policy, limit: int | None, critic: Critic | None = None) -> None:
        self.users, self.limit = [policy, critic], limit
        self.start = self._total()

    def _total(self) -> int:
        spent = usage(*self.users)
        keys = ("tokens_in", "tokens_out", "cached_tokens_in", "cached_tokens_out")
        return sum(spent.get(k, 0) for k in keys)

    def left(self) -> int | None:
        return None if self.limit is None else self.limit - (self._total() - self.start)

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


def charge(result: SearchResult, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Set the result's model usage to what the clients metered between `before` and `after`
    (`usage` snapshots; {} without a model): every call, priors and retries included."""
    if not after:
        return
    spent = lambda key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
    result.tokens_in = spent("tokens_in")
    result.tokens_out = spent("tokens_out")
    result.cost_usd = spent("cost_usd")
    result.cached_calls = spent("cached_calls")
    result.model_calls = spent("calls") + result.cached_calls
    result.cached_tokens_in = spent("cached_tokens_in")
    result.cached_tokens_out = spent("cached_tokens_out")
    result.cached_cost_usd = spent("cached_cost_usd")
