"""A search replayed from the request cache (a resumed run, a retried bundle) spends its token
budget as the paid original did, so it stops at the same point with the same trajectories, and
its usage says what was paid before instead of zero."""

from __future__ import annotations

import pytest

from trajforge.environments.base import TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.synthesizers.llm_policy import make_llm_policy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search

TASK = TaskSpec("corridor-4-2", seed=3)


@pytest.mark.parametrize("method", ["best_of_n", "mcts", "particle"])
def test_a_replayed_search_stops_where_the_paid_one_did(tiny_server, tmp_path, method):
    spec = f"openai:{tiny_server.url}#{tiny_server.name}"
    settings = SearchSettings(
        method=method,
        max_steps=4,
        samples=12,
        budget=Budget(env_steps=400, simulations=60, tokens=2500),
        mcts=MCTSSettings(expand_k=4),
    )
    options = {
        "cache_dir": tmp_path / "cache",
        "max_tokens": 16,
        "price_in_per_m": 2.0,
        "price_out_per_m": 8.0,
    }

    def run() -> tuple:
        policy = make_llm_policy(spec, **options)  # a new process's policy: nothing in memory
        result = search(ToyEnvironment(), TASK, policy, settings, seed=11)
        policy.close()
        return result

    paid = run()
    replay = run()

    steps = lambda r: [[(s.action, s.thought) for s in p.steps] for p in r.paths]  # noqa: E731
    bound = len(paid.paths) < settings.samples if method == "best_of_n" else paid.stop_reason == "tokens"
    assert bound, "the token budget must be what ends the original search"
    assert steps(replay) == steps(paid) and replay.stop_reason == paid.stop_reason
    assert (replay.tokens_in, replay.tokens_out, replay.cost_usd) == (0, 0, 0.0)  # nothing paid again
    # What the original paid (plus what it already found in the cache: a tree asks some twice).
    assert paid.tokens_in > 0 and paid.cost_usd > 0
    assert replay.cached_tokens_in == paid.tokens_in + paid.cached_tokens_in
    assert replay.cached_tokens_out == paid.tokens_out + paid.cached_tokens_out
    assert replay.cached_cost_usd == pytest.approx(paid.cost_usd + paid.cached_cost_usd)
    assert replay.cached_calls == replay.model_calls == paid.model_calls
