"""Ids pinned to the values earlier versions minted: a resumed or rerun run finds its rows only
if the same content still gets the same id. A change here breaks resume across versions: it
must be deliberate (and the test updated with a note), never a side effect."""

from __future__ import annotations

from trajforge.schemas import ids

TASK = "72f7e2a05651c1c9090b41465cadfecd"  # ids.task_id("toy", "key-door", 7)
ROLLOUT = {"search": "rollout", "max_steps": 40}
BEST_OF_4 = {
    "search": "best_of_n",
    "max_steps": 40,
    "budget": {"env_steps": 400, "simulations": 10000},
    "samples": 4,
}
MCTS = {
    "search": "mcts",
    "max_steps": 40,
    "budget": {"env_steps": 400, "simulations": 10000},
    "mcts": {"expand_k": 32, "c_puct": 0.5, "rollout_depth": 1},
}


def test_a_task_keeps_its_id():
    assert ids.task_id("toy", "key-door", 7) == TASK


def test_sampled_trajectories_keep_their_ids():
    assert ids.trajectory_id(TASK, "random", ROLLOUT, 0) == "0c31de0cb57338299efa0d2555f6c8c2"
    assert ids.trajectory_id(TASK, "random", BEST_OF_4, 2) == "b236f9b8df40201726f005a17382e6b5"


def test_tree_trajectories_and_nodes_keep_their_ids():
    path = ["go east", "take key"]
    assert ids.tree_trajectory_id(TASK, "oracle", MCTS, path) == "d7bdbfe72e8a1cc4796db9ef2f36a463"
    assert ids.node_id(TASK, "oracle", MCTS, ["go east"]) == "070b7a20fd415aa2de19acf744f0b12a"
    assert ids.node_id(TASK, "oracle", MCTS, []) == "51e2506c7f4862b30e86458560f4c0c5"


def test_pairs_keep_their_ids():
    origin = {"policy": "oracle", "search": MCTS}
    sibling = ids.pair_id(TASK, 1, "[prefix]", "take key", "go west", "mcts_sibling", origin)
    assert sibling == "173ceb7b60903353d8e94ac48fe4d939"
    assert ids.pair_id(TASK, 0, "[p]", "[c]", "[r]", "trajectory") == "1db46e36ad053876d4a79dadd16f6e03"


def test_failures_artifacts_and_seeds_keep_their_ids():
    assert ids.search_failure_id(TASK, "random", ROLLOUT) == "1145ecc8aa24281cdc2a35ff3ff6ec89"
    assert ids.artifact_id("t" * 32, 2, "screenshot") == "c50bad077d5fb97423d97baa3cbc0c65"
    assert ids.search_seed(TASK, "random", ROLLOUT) == 1632957163


def test_a_failed_judgement_has_an_id_of_its_own_per_stage():
    assert ids.judgement_failure_id("t" * 32, "judge") == "ca6b84ae2024df6cf96c66ca687c5aca"
    assert ids.judgement_failure_id("t" * 32, "critique") != ids.judgement_failure_id("t" * 32, "judge")
