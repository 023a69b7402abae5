from trajforge.environments.base import TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.schemas.conversation import messages
from trajforge.synthesizers.policies import OraclePolicy, RandomPolicy, make_policy
from trajforge.synthesizers.rollout import rollout

TASK = TaskSpec("corridor-4-2", seed=7)


def test_oracle_solves_the_task_and_records_every_step():
    ep = rollout(ToyEnvironment(), TASK, OraclePolicy(), seed=1, max_steps=20, timeout_s=10)
    assert ep.success is True
    assert ep.stop_reason == "done"
    assert [s.action for s in ep.steps] == [
        "go east",
        "go east",
        "take key",
        "go east",
        "go east",
        "open door",
    ]
    assert ep.total_reward == 1.0
    assert ep.env_steps == len(ep.steps)
    assert [s.index for s in ep.steps] == list(range(len(ep.steps)))
    assert ep.steps[-1].done and not ep.steps[0].done
    assert ep.final_observation.endswith("You win!")


def test_step_limit_stops_the_episode_and_counts_as_failure():
    ep = rollout(ToyEnvironment(), TASK, OraclePolicy(), seed=1, max_steps=3, timeout_s=10)
    assert ep.stop_reason == "max_steps"
    assert len(ep.steps) == 3
    assert ep.success is False


def test_time_limit_stops_the_episode():
    ep = rollout(ToyEnvironment(), TASK, RandomPolicy(), seed=1, max_steps=10_000, timeout_s=0.0)
    assert ep.stop_reason == "timeout"


def test_random_policy_is_deterministic_per_seed_and_admissible():
    env = ToyEnvironment()
    a = rollout(env, TASK, RandomPolicy(), seed=3, max_steps=15, timeout_s=10)
    b = rollout(env, TASK, RandomPolicy(), seed=3, max_steps=15, timeout_s=10)
    c = rollout(env, TASK, RandomPolicy(), seed=4, max_steps=15, timeout_s=10)
    assert [s.action for s in a.steps] == [s.action for s in b.steps]
    assert [s.action for s in a.steps] != [s.action for s in c.steps]
    assert all(s.observation != "That is not something you can do here." for s in a.steps)


def test_policy_specs_are_checked():
    import pytest

    from trajforge.environments.base import ConfigError

    with pytest.raises(ConfigError, match="unknown policy 'gpt'"):
        make_policy("gpt")


def test_conversation_alternates_observations_and_actions():
    ep = rollout(ToyEnvironment(), TASK, OraclePolicy(), seed=1, max_steps=20, timeout_s=10)
    msgs = messages("toy", ep.instruction, [s.row() for s in ep.steps])
    assert [m["role"] for m in msgs[:3]] == ["system", "user", "assistant"]
    assert msgs[1]["content"].startswith("Task: " + ep.instruction)
    assert len(msgs) == 1 + 2 * len(ep.steps)
    assert msgs[-1]["content"].endswith("open door")
    prefix = messages("toy", ep.instruction, [s.row() for s in ep.steps], upto=2)
    assert [m["role"] for m in prefix] == ["system", "user", "assistant", "user", "assistant", "user"]
