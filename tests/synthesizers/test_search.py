import json

import pytest

from trajforge.environments.base import EnvironmentFailure, TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.schemas import conversation
from trajforge.synthesizers.pairs import sibling_pairs, trajectory_pairs
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search

TASK = TaskSpec("corridor-5-3", seed=1)


DEFAULT_BUDGET = Budget(env_steps=400)


def mcts(budget=DEFAULT_BUDGET, branching="auto", seed=7, task=TASK, **kw):
    settings = SearchSettings(
        method="mcts", max_steps=20, budget=budget, mcts=MCTSSettings(branching=branching, **kw)
    )
    return search(ToyEnvironment(max_length=6), task, RandomPolicy(), settings, seed)


def tree(result):
    return [(n.path, n.visits, round(n.value, 9), n.prior, n.reward, n.terminal) for n in result.nodes]


def test_mcts_finds_a_verified_success_within_budget():
    result = mcts()
    best = result.paths[0]
    assert best.success is True
    assert best.steps[-1].action == "open door" and best.total_reward == 1.0
    assert result.env_steps <= 400
    assert all(s.value is not None for s in best.steps)


def test_same_seed_same_tree_other_seed_other_tree():
    assert tree(mcts(seed=7)) == tree(mcts(seed=7))
    assert tree(mcts(seed=7)) != tree(mcts(seed=8))


def test_snapshot_and_replay_build_the_same_tree_and_snapshot_steps_less():
    budget = Budget(env_steps=10**6, simulations=150)
    snap, replay = mcts(budget, "snapshot"), mcts(budget, "replay")
    assert tree(snap) == tree(replay)
    assert snap.simulations == replay.simulations == 150
    assert snap.env_steps < replay.env_steps


def test_budgets_stop_the_search():
    assert mcts(Budget(env_steps=25)).env_steps == 25
    assert mcts(Budget(env_steps=10**6, simulations=10)).simulations == 10
    assert mcts(Budget(env_steps=10**6, wall_s=1e-9)).stop_reason == "wall_s"


def test_nodes_form_a_tree_with_consistent_visits():
    result = mcts()
    root = result.nodes[0]
    assert root.path == () and root.visits == result.simulations
    for node in result.nodes[1:]:
        assert node.parent is not None and node.path[:-1] == node.parent.path
        assert node.parent.visits >= node.visits


def test_sibling_pairs_respect_the_gap_and_extend_the_best_path():
    result = mcts(Budget(env_steps=600))
    best = result.paths[0]
    steps = [s.row() for s in best.steps]
    pairs = sibling_pairs(result.root, steps, env="toy", instruction=result.instruction, task_id="t", gap=0.2)
    assert pairs
    whole = conversation.messages("toy", result.instruction, steps)
    for pair in pairs:
        assert pair.q_chosen - pair.q_rejected >= 0.2
        prefix = json.loads(pair.prefix)
        assert whole[: len(prefix)] == prefix and prefix[-1]["role"] == "user"
        assert pair.chosen == whole[len(prefix)]["content"] != pair.rejected


def test_two_trees_offering_the_same_preference_give_two_records_not_a_conflict():
    """Two searches of one task (two policies) can prefer the same action at the same prefix
    with other Q values: each tree's pair is its own record, named by its origin."""
    from trajforge.validators.dedup import dedupe

    def pairs_of(seed: int, origin):
        result = mcts(Budget(env_steps=600), seed=seed)
        steps = [s.row() for s in result.paths[0].steps]
        return sibling_pairs(
            result.root, steps, env="toy", instruction=result.instruction, task_id="t", gap=0.2, origin=origin
        )

    anonymous = [p.row() for p in pairs_of(1, None) + pairs_of(2, None)]
    assert dedupe(anonymous, "pair_id").conflicts  # what a run with two policies used to stage
    a = pairs_of(1, {"policy": "random", "search": {"search": "mcts"}})
    b = pairs_of(2, {"policy": "oracle", "search": {"search": "mcts"}})
    assert {p.policy for p in a} == {"random"} and {p.policy for p in b} == {"oracle"}
    result = dedupe([p.row() for p in a + b], "pair_id")
    assert result.conflicts == [] and result.dropped == 0


def test_best_of_n_spends_the_same_budget_through_the_same_entry_point():
    settings = SearchSettings(method="best_of_n", max_steps=20, samples=50, budget=Budget(env_steps=100))
    result = search(ToyEnvironment(max_length=6), TASK, RandomPolicy(), settings, seed=3)
    assert result.env_steps <= 100 and len(result.paths) >= 5
    assert sorted(p.sample for p in result.paths) == list(range(len(result.paths)))
    ranks = [(not p.success, -p.total_reward) for p in result.paths]
    assert ranks == sorted(ranks)  # best first


def test_trajectory_pairs_match_a_success_with_a_failure_of_the_same_task():
    settings = SearchSettings(method="best_of_n", max_steps=8, samples=12, budget=Budget(env_steps=400))
    result = search(
        ToyEnvironment(max_length=6), TaskSpec("corridor-3-1", 2), RandomPolicy(), settings, seed=5
    )
    rows = [
        {
            "trajectory_id": f"t{p.sample}",
            "task_id": "task",
            "env": "toy",
            "instruction": result.instruction,
            "steps": [s.row() for s in p.steps],
            "num_steps": len(p.steps),
            "success": p.success,
            "total_reward": p.total_reward,
        }
        for p in result.paths
    ]
    assert any(r["success"] for r in rows) and any(not r["success"] for r in rows)
    pairs = trajectory_pairs(rows, max_pairs=3)
    assert 1 <= len(pairs) <= 3
    assert all(p.source == "trajectory" and p.q_chosen > p.q_rejected for p in pairs)


def test_an_environment_crash_mid_search_raises_for_that_task_only():
    with pytest.raises(EnvironmentFailure):
        mcts(task=TaskSpec("corridor-3-1-crash", 1))


def test_oracle_rollouts_inside_mcts_read_the_right_state():
    from trajforge.synthesizers.policies import OraclePolicy

    for branching in ("snapshot", "replay"):
        settings = SearchSettings(
            method="mcts",
            max_steps=20,
            budget=Budget(env_steps=200),
            mcts=MCTSSettings(branching=branching, rollout_depth=20),
        )
        result = search(ToyEnvironment(max_length=6), TASK, OraclePolicy(), settings, seed=1)
        assert result.paths[0].success and len(result.paths[0].steps) == 7  # the shortest solution


class MeteredRandom(RandomPolicy):
    """The random policy, charged 100 tokens per action by a meter shaped like a model client's."""

    def __init__(self) -> None:
        super().__init__()
        self.spent = 0
        self.client = self

    def stats(self) -> dict:
        return {"tokens_in": self.spent, "tokens_out": 0, "cost_usd": 0.0, "calls": 0, "cached_calls": 0}

    def act(self, ctx):
        self.spent += 100
        return super().act(ctx)


@pytest.mark.parametrize("method", ["best_of_n", "mcts", "particle"])
def test_a_token_budget_stops_the_search(method):
    settings = SearchSettings(
        method=method,
        max_steps=20,
        samples=50,
        budget=Budget(env_steps=400, tokens=1000),
        mcts=MCTSSettings(),
    )
    unbounded = search(
        ToyEnvironment(max_length=6),
        TASK,
        MeteredRandom(),
        SearchSettings(
            method=method, max_steps=20, samples=50, budget=Budget(env_steps=400), mcts=MCTSSettings()
        ),
        seed=3,
    )
    bounded = search(ToyEnvironment(max_length=6), TASK, MeteredRandom(), settings, seed=3)
    assert unbounded.tokens_in > 2000
    # Checked between steps: at most one action's tokens past the limit.
    assert 1000 <= bounded.tokens_in <= 1100
    if method in ("mcts", "particle"):
        assert bounded.stop_reason == "tokens"
    else:
        assert bounded.paths[-1].stop_reason == "tokens" or len(bounded.paths) < 50


class CorridorCritic:
    """A critic that knows the corridor: it values the move towards the key, then the door."""

    client = None

    def __init__(self) -> None:
        self.calls = 0

    def values(self, instruction, observation, actions):
        self.calls += 1
        has_key = "You carry a key" in observation
        best = "take key" if "take key" in actions else "open door" if "open door" in actions else None
        room = int(observation.split("room ")[1].split(" ")[0])
        best = best or ("go east" if has_key or room < 3 else "go west")
        return {a: 1.0 if a == best else 0.2 for a in actions}


def test_a_critic_guides_mcts_to_a_success_with_fewer_steps_and_lands_on_nodes():
    budget = Budget(env_steps=400, simulations=40)
    plain = mcts(budget=budget)
    critic = CorridorCritic()
    settings = SearchSettings(
        method="mcts",
        max_steps=20,
        budget=budget,
        mcts=MCTSSettings(critic_weight=0.5, critic="test-critic"),
    )
    guided = search(ToyEnvironment(max_length=6), TASK, RandomPolicy(), settings, 7, critic)
    assert guided.paths[0].success and guided.paths[0].steps[-1].action == "open door"
    assert not plain.paths[0].success  # the same 40 simulations without a critic do not get there
    assert len(guided.paths[0].steps) == 7  # the shortest solution: 3 east, key, 2 east, door
    assert critic.calls > 0
    scored = [n for n in guided.nodes if n.critic is not None]
    assert scored and all(0 <= n.critic <= 1 for n in scored)
    on_path = [n for n in guided.nodes if n.depth and n.path == guided.paths[0].key[: n.depth]]
    assert on_path and all(n.critic == 1.0 for n in on_path)


def test_without_weight_the_critic_is_not_asked_and_ids_do_not_change():
    from trajforge.synthesizers.search import search_key

    critic = CorridorCritic()
    settings = SearchSettings(method="mcts", max_steps=20, mcts=MCTSSettings(critic="test-critic"))
    result = search(ToyEnvironment(max_length=6), TASK, RandomPolicy(), settings, 7, critic)
    assert critic.calls == 0 and all(n.critic is None for n in result.nodes)
    assert tree(result) == tree(mcts())
    assert search_key(settings) == search_key(SearchSettings(method="mcts", max_steps=20))
    weighted = SearchSettings(method="mcts", max_steps=20, mcts=MCTSSettings(critic_weight=0.5))
    assert search_key(weighted) != search_key(settings)


class SeeingPolicy(RandomPolicy):
    """Random, remembering the longest observation it was shown."""

    longest = 0

    def act(self, ctx):
        self.longest = max(self.longest, len(ctx.observation))
        return super().act(ctx)


@pytest.mark.parametrize("method", ["rollout", "best_of_n", "mcts", "particle"])
def test_a_huge_observation_is_cut_to_the_cap_in_rows_and_prompts(method):
    env = ToyEnvironment(max_length=3, wall_text=200_000)
    cap = 1_000
    settings = SearchSettings(
        method=method, max_steps=8, samples=2, budget=Budget(env_steps=60), max_observation_chars=cap
    )
    policy = SeeingPolicy()
    result = search(env, TaskSpec("corridor-3-1", seed=1), policy, settings, seed=3)
    marker = len("[... 200000 characters cut ...]")
    seen = [s.observation for p in result.paths for s in p.steps]
    seen += [p.final_observation for p in result.paths]
    assert seen and all(len(o) <= cap + marker for o in seen)
    assert any("characters cut ...]" in o for o in seen)
    assert all(o.startswith("You are in room") for o in seen if "characters cut" in o)  # the head stays
    assert 0 < policy.longest <= cap + marker  # what the policy is shown, MCTS leaf rollouts too
    assert len(env.reset(TaskSpec("corridor-3-1", seed=1)).observation) > 200_000  # the env itself is uncut


def test_the_observation_cap_is_part_of_the_ids_only_when_changed():
    from trajforge.synthesizers.search import search_key

    assert "max_observation_chars" not in search_key(SearchSettings())
    assert search_key(SearchSettings(max_observation_chars=500))["max_observation_chars"] == 500
