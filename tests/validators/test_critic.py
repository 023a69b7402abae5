"""The action critic against `serve-model`'s CPU server on a tiny model, over real HTTP."""

from __future__ import annotations

import pytest

from trajforge.environments.base import ConfigError
from trajforge.environments.toy import ToyEnvironment
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search
from trajforge.validators.critic import make_critic

ACTIONS = ["go east", "go west", "take key"]


def test_values_are_relative_to_the_top_pick_deterministic_and_cached(tiny_server, tmp_path):
    spec = f"openai:{tiny_server.url}#{tiny_server.name}"
    critic = make_critic(spec, cache_dir=str(tmp_path / "cache"), timeout_s=30)
    values = critic.values("Take the key.", "You are in room 1 of 3. A key lies here.", ACTIONS)
    assert set(values) == set(ACTIONS)
    assert max(values.values()) == 1.0 and all(0 < v <= 1 for v in values.values())
    assert critic.values("Take the key.", "You are in room 1 of 3. A key lies here.", ACTIONS) == values
    stats = critic.client.stats()
    assert stats["tokens_in"] > 0 and stats["cached_calls"] == len(ACTIONS)  # the second time: cache
    assert critic.values("Take the key.", "You are in room 0 of 3.", ["go east"]) == {}  # forced move
    critic.close()


def test_mcts_with_the_model_critic_stores_its_values_and_counts_its_tokens(tiny_server, tmp_path):
    spec = f"openai:{tiny_server.url}#{tiny_server.name}"
    critic = make_critic(spec, cache_dir=None, timeout_s=30)
    settings = SearchSettings(
        method="mcts",
        max_steps=10,
        budget=Budget(env_steps=60, simulations=20),
        mcts=MCTSSettings(critic_weight=0.3, critic=spec),
    )
    env = ToyEnvironment()
    task = env.task_specs(1, seed=0)[0]
    result = search(env, task, RandomPolicy(), settings, 1, critic)
    valued = [n.critic for n in result.nodes if n.critic is not None]
    assert valued and max(valued) == 1.0
    assert result.tokens_in > 0 and result.model_calls > 0  # the critic's calls are the search's cost
    critic.close()


def test_a_bad_critic_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="openai:URL"):
        make_critic("gpt4")
