"""A search's rows, made without Beam: the ids of every scheme, the cost shares, the tree and its
pairs, and what the pair mining dropped, by reason."""

from __future__ import annotations

from collections import Counter

from trajforge.environments.toy import ToyEnvironment
from trajforge.pipelines.spec import planned_task
from trajforge.schemas import ids
from trajforge.schemas.records import Task
from trajforge.synthesizers.pairs import trajectory_pairs
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.records import (
    ARTIFACTS,
    COUNTS,
    NODES,
    PAIRS,
    TRAJECTORIES,
    item_key,
    search_records,
)
from trajforge.synthesizers.search import Budget, SearchSettings, search, search_key, search_seed

PLANNED = planned_task("toy", "corridor-5-3", 1)
TASK = {**PLANNED, "instruction": "take the key and open the door"}
BEST_OF_N = SearchSettings(method="best_of_n", max_steps=8, samples=5, budget=Budget(env_steps=37))
MCTS = SearchSettings(method="mcts", max_steps=20, budget=Budget(env_steps=600))


def rows_of(settings: SearchSettings, **kw) -> tuple[list, object, dict]:
    from trajforge.environments.base import TaskSpec

    key = item_key("random", settings)
    seed = search_seed(TASK["task_id"], "random", settings)
    result = search(ToyEnvironment(max_length=6), TaskSpec("corridor-5-3", 1), RandomPolicy(), settings, seed)
    return search_records(TASK, "random", key, result, settings, run_id="run", **kw), result, key


def of(rows: list, table: str) -> list[dict]:
    return [row for t, row in rows if t == table]


def test_a_planned_task_carries_the_id_its_task_record_gets():
    record = Task.make("toy", "corridor-5-3", 1, "any instruction")
    assert PLANNED["task_id"] == record.task_id == ids.task_id("toy", "corridor-5-3", 1)


def test_the_search_keys_of_default_settings_are_the_ones_ids_are_pinned_to():
    from tests.schemas.test_ids import BEST_OF_4, ROLLOUT
    from tests.schemas.test_ids import MCTS as MCTS_KEY

    assert search_key(SearchSettings()) == ROLLOUT
    assert search_key(SearchSettings(method="best_of_n", samples=4)) == BEST_OF_4
    assert search_key(SearchSettings(method="mcts")) == MCTS_KEY


def test_samples_are_named_by_their_index_and_share_the_search_cost():
    rows, result, key = rows_of(BEST_OF_N)
    trajectories = of(rows, TRAJECTORIES)
    assert len(trajectories) == len(result.paths) > 1
    assert [t["trajectory_id"] for t in trajectories] == [
        ids.trajectory_id(TASK["task_id"], "random", key, p.sample) for p in result.paths
    ]
    assert sum(t["env_steps"] for t in trajectories) == result.env_steps  # the remainder goes to the best
    assert all(t["run_id"] == "run" and t["search"] == "best_of_n" for t in trajectories)
    assert of(rows, NODES) == of(rows, PAIRS) == of(rows, COUNTS) == of(rows, ARTIFACTS) == []


def test_a_tree_gives_its_best_path_its_nodes_and_sibling_pairs_with_the_drops_counted():
    rows, result, key = rows_of(MCTS, pair_gap=0.2)
    [best] = of(rows, TRAJECTORIES)
    path = [s.action for s in result.paths[0].steps]
    assert best["trajectory_id"] == ids.tree_trajectory_id(TASK["task_id"], "random", key, path)
    assert best["success"] and best["env_steps"] == result.env_steps
    nodes = of(rows, NODES)
    by_id = {n["node_id"]: n for n in nodes}
    assert len(by_id) == len(result.nodes)
    assert nodes[0]["parent_id"] is None and nodes[0]["node_id"] == ids.node_id(
        TASK["task_id"], "random", key, []
    )
    assert all(by_id[n["parent_id"]]["depth"] == n["depth"] - 1 for n in nodes[1:])
    pairs = of(rows, PAIRS)
    assert pairs and all(p["q_chosen"] - p["q_rejected"] >= 0.2 for p in pairs)
    counts = {c["key"]: c["n"] for c in of(rows, COUNTS)}
    assert set(counts) <= {"dropped:pairs:below_gap", "dropped:pairs:unvisited"} and counts
    assert all(c["stage"] == "pairs:mcts_sibling" for c in of(rows, COUNTS))
    kept_all, _, _ = rows_of(MCTS, pair_gap=0.2, keep_terminal_paths=True)
    assert len(of(kept_all, TRAJECTORIES)) == len(result.paths) >= 1


def test_pair_mining_counts_what_it_drops_by_reason():
    def row(i: int, success: bool, instruction: str = "open the door") -> dict:
        steps = [{"index": 0, "observation": "a room", "action": f"go {i}", "thought": None}]
        return {
            "trajectory_id": f"t{i}",
            "task_id": "task",
            "env": "toy",
            "instruction": instruction,
            "steps": steps,
            "num_steps": 1,
            "success": success,
            "total_reward": float(success),
        }

    dropped: Counter = Counter()
    rows = [row(0, True), row(1, True), row(2, False), row(3, False, "another start")]
    pairs = trajectory_pairs(rows, max_pairs=3, dropped=dropped)
    # 2 wins x 2 losses: one over the limit; of the three tried, the one against t3 starts elsewhere
    assert dropped == {"over_limit": 1, "different_start": 1}
    assert len(pairs) == 2


def test_tool_call_steps_keep_each_call_and_its_result_and_the_declared_tools():
    import json

    from trajforge.environments.base import TaskSpec
    from trajforge.environments.webapp.api import ShopApiEnvironment
    from trajforge.synthesizers.policies import OraclePolicy

    settings = SearchSettings(method="rollout", max_steps=8)
    env = ShopApiEnvironment()
    result = search(env, TaskSpec("buy", 3), OraclePolicy(), settings, 0)
    task = {**planned_task("shop-api", "buy", 3), "instruction": result.instruction}
    rows = search_records(
        task, "oracle", item_key("oracle", settings), result, settings, run_id="r", tools=env.tools
    )
    (trajectory,) = of(rows, TRAJECTORIES)
    assert trajectory["success"] and json.loads(trajectory["tools"]) == env.tools
    steps = trajectory["steps"]
    assert [s["tool_name"] for s in steps] == ["search_products", "get_product", "add_to_cart", "checkout"]
    assert json.loads(steps[2]["tool_arguments"]) == json.loads(steps[2]["action"])["arguments"]
    assert [s["tool_result"] for s in steps] == [s["observation"] for s in steps[1:]] + [
        trajectory["final_observation"]
    ]
    assert "order_id" in json.loads(steps[-1]["tool_result"])
    # a text-action environment's steps carry no tool columns
    toy_rows, _, _ = rows_of(BEST_OF_N)
    assert all(s["tool_name"] is None for t in of(toy_rows, TRAJECTORIES) for s in t["steps"])
    assert all(t["tools"] is None for t in of(toy_rows, TRAJECTORIES))
