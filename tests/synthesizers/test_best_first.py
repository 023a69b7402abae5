"""best_first (A*-style, as in ToolChain*) on the toy corridor, through the same entry point and
budget as the other methods: it finds the door, a prior that knows the way makes it cheaper, the
same seed gives the same tree, the budget binds, and its rows read as a tree's."""

from __future__ import annotations

import pytest

from trajforge.environments.base import TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.records import NODES, PAIRS, TRAJECTORIES, item_key, search_records
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search, search_key

TASK = TaskSpec("corridor-5-3", seed=1)
BUDGET = Budget(env_steps=400)


class CorridorPrior(RandomPolicy):
    """Priors that know the corridor: the key, then the door, east before west."""

    favoured = {"take key": 0.85, "open door": 0.85, "go east": 0.6, "go west": 0.05}

    def priors(self, ctx) -> dict[str, float]:
        return {a: self.favoured.get(a, 0.1) for a in ctx.admissible}


def best_first(budget=BUDGET, seed=7, policy=None, task=TASK, judge=None, **mcts):
    settings = SearchSettings(method="best_first", max_steps=20, budget=budget, mcts=MCTSSettings(**mcts))
    return search(ToyEnvironment(max_length=6), task, policy or RandomPolicy(), settings, seed, judge)


def tree(result):
    return [(n.path, n.visits, round(n.value, 9), n.prior, n.reward, n.terminal) for n in result.nodes]


def test_best_first_opens_the_door_within_the_budget_and_stops_there():
    result = best_first()
    best = result.paths[0]
    assert best.success is True and best.total_reward == 1.0
    assert best.steps[-1].action == "open door"
    assert len(best.steps) == 7  # uniform prior: breadth-first by steps, so the shortest solution
    assert result.stop_reason == "success" and result.env_steps < 400
    assert [s.value for s in best.steps] == [1.0] * 7  # each step's Q: the best return below it


def test_a_prior_that_knows_the_way_opens_the_door_in_fewer_env_steps():
    guided, uniform = best_first(policy=CorridorPrior()), best_first()
    assert guided.paths[0].success and uniform.paths[0].success
    assert guided.env_steps * 3 < uniform.env_steps
    tight = Budget(env_steps=guided.env_steps)
    assert best_first(tight, policy=CorridorPrior()).paths[0].success
    assert not best_first(tight).paths[0].success  # the uniform search runs out on the same budget


def test_a_critic_that_knows_the_way_guides_it_like_a_prior():
    from tests.synthesizers.test_search import CorridorCritic

    critic = CorridorCritic()
    guided = best_first(judge=critic, critic_weight=0.9, critic="test-critic")
    assert guided.paths[0].success and critic.calls > 0
    assert guided.env_steps * 3 < best_first().env_steps
    unweighted = CorridorCritic()
    assert tree(best_first(judge=unweighted, critic="test-critic")) == tree(best_first())
    assert unweighted.calls == 0  # without a weight, not asked


def test_same_seed_same_tree_other_seed_other_order():
    assert tree(best_first(seed=7)) == tree(best_first(seed=7))
    assert tree(best_first(seed=7)) != tree(best_first(seed=8))
    assert [n.path for n in best_first(seed=7).nodes] == [n.path for n in best_first(seed=7).nodes]


@pytest.mark.parametrize("branching", ["snapshot", "replay"])
def test_the_env_step_budget_binds(branching):
    result = best_first(Budget(env_steps=25), task=TaskSpec("corridor-6-0", 1), branching=branching)
    assert result.env_steps <= 25 and result.stop_reason == "env_steps"
    assert result.paths[0].success is False and result.paths[0].stop_reason == "search_budget"


def test_simulation_and_wall_budgets_stop_it():
    assert best_first(Budget(env_steps=10**6, simulations=10)).simulations == 10
    assert best_first(Budget(env_steps=10**6, wall_s=1e-9)).stop_reason == "wall_s"


def test_its_rows_are_a_best_path_its_nodes_and_sibling_pairs():
    settings = SearchSettings(method="best_first", max_steps=20, budget=Budget(env_steps=400))
    task = {"task_id": "t-corridor", "env": "toy"}
    key = item_key("random", settings)
    result = search(ToyEnvironment(max_length=6), TASK, RandomPolicy(), settings, 7)
    rows = search_records(task, "random", key, result, settings, run_id="run", pair_gap=0.5)
    trajectories = [r for t, r in rows if t == TRAJECTORIES]
    nodes = [r for t, r in rows if t == NODES]
    pairs = [r for t, r in rows if t == PAIRS]
    assert len(trajectories) == 1 and trajectories[0]["search"] == "best_first"
    assert trajectories[0]["success"] and trajectories[0]["env_steps"] == result.env_steps
    assert len(nodes) == len(result.nodes) == result.simulations + 1  # every popped node and the root
    assert all(n["visits"] == 1 for n in nodes)
    assert pairs and all(p["q_chosen"] - p["q_rejected"] >= 0.5 for p in pairs)
    assert all(p["source"] == "mcts_sibling" and p["policy"] == "random" for p in pairs)


def test_what_it_reads_of_the_mcts_settings_is_part_of_its_ids():
    plain = SearchSettings(method="best_first")
    assert search_key(plain)["best_first"] == {"expand_k": 32}
    assert search_key(SearchSettings(method="best_first", mcts=MCTSSettings(c_puct=2.0))) == search_key(plain)
    assert search_key(SearchSettings(method="best_first", mcts=MCTSSettings(expand_k=4))) != search_key(plain)
    critic = SearchSettings(method="best_first", mcts=MCTSSettings(critic_weight=0.5, critic="judge"))
    assert search_key(critic)["best_first"] == {"expand_k": 32, "critic_weight": 0.5, "critic": "judge"}


def test_a_run_searching_best_first_with_a_critic_weight_hands_its_searches_the_judge():
    from trajforge.flows.config import RunConfig
    from trajforge.flows.run import pipeline_spec
    from trajforge.pipelines.synthesis import Search

    judge = "openai:http://127.0.0.1:9/v1#judge"
    for weight, critic in ((0.5, True), (0.0, False)):
        config = RunConfig(envs=["toy"], search="best_first", judge=judge, mcts={"critic_weight": weight})
        stage = Search(pipeline_spec(config, "run", "part"))
        stage.setup()
        try:
            assert (stage.critic() is not None) is critic
        finally:
            stage.teardown()
