"""Task synthesis on the shop in a real Chromium, small: exploration changes the shop's state,
relabelling and templates turn it into goals, and every kept task is false at reset and reached
by its witness in a fresh shop."""

from __future__ import annotations

import json

from trajforge.environments import goals
from trajforge.environments.base import TaskSpec
from trajforge.environments.webapp.environment import WebAppEnvironment
from trajforge.synthesizers.policies import make_policy
from trajforge.synthesizers.search import Budget, SearchSettings
from trajforge.synthesizers.tasks import DROPS, SynthesisSettings, synthesize


def test_shop_tasks_are_verified_in_a_fresh_shop():
    settings = SynthesisSettings(
        instances=1, sources=("template", "explored"), explore_steps=60, attempts=1, embeddings=False
    )
    search = SearchSettings(method="rollout", max_steps=2, budget=Budget(env_steps=2))
    result = synthesize("webapp", {}, settings, search, make_policy("random"), seed=3)
    assert result.tasks, result.counts
    kept = [r for r in result.candidates if r["status"] == "kept"]
    assert len(kept) == len(result.tasks) == result.counts["kept:template"] + result.counts["kept:explored"]
    assert {r["reason"] for r in result.candidates if r["status"] == "dropped"} <= set(DROPS)
    kinds = {f[0] for t in result.tasks for f in json.loads(t["goal"])}
    assert len(kinds) >= 2, kinds
    env = goals.wrap(WebAppEnvironment())
    try:
        for t in result.tasks:
            reset = env.reset(TaskSpec(t["env_task"], t["seed"]))
            assert reset.instruction == t["instruction"]
            assert not goals.goal_holds(env, tuple(tuple(f) for f in json.loads(t["goal"])))
            assert [env.step(a) for a in t["witness"]][-1].success is True, t
    finally:
        env.close()
