"""MCTS runs through the command line: trees, step values and preference pairs in the lake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import run_counts, sql_json
from trajforge.schemas import conversation


@pytest.fixture(scope="module")
def mcts_lake(cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mcts") / "data"
    config = tmp_path_factory.mktemp("cfg") / "mcts.yaml"
    config.write_text("search: mcts\npolicies: [random]\ntasks: 3\nseed: 5\nmcts: {pair_gap: 0.1}\n")
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr + result.stdout
    return out


def test_mcts_stores_best_paths_nodes_and_step_values(cli, mcts_lake):
    trajs = sql_json(cli, mcts_lake, "SELECT search, policy, success, env_steps, steps FROM trajectories")
    assert len(trajs) == 3 and {t["search"] for t in trajs} == {"mcts"}
    assert sum(t["success"] for t in trajs) >= 2
    assert all(s["value"] is not None for t in trajs for s in t["steps"])
    nodes = sql_json(
        cli, mcts_lake, "SELECT count(*) AS n, count(DISTINCT task_id) AS tasks, max(depth) AS d FROM nodes"
    )
    assert nodes[0]["n"] > 30 and nodes[0]["tasks"] == 3 and nodes[0]["d"] >= 2
    roots = sql_json(cli, mcts_lake, "SELECT count(*) AS n FROM nodes WHERE parent_id IS NULL AND depth = 0")
    assert roots[0]["n"] == 3


def test_runs_record_the_env_steps_spent(cli, mcts_lake):
    runs = sql_json(cli, mcts_lake, "SELECT env_steps FROM runs")
    spent = sql_json(cli, mcts_lake, "SELECT sum(env_steps) AS n FROM trajectories")[0]["n"]
    assert runs[0]["env_steps"] == spent > 0


def test_runs_count_the_pairs_the_mining_dropped_by_reason(cli, mcts_lake):
    counts = run_counts(cli, mcts_lake)
    dropped = {
        k.removeprefix("dropped:pairs:"): v for k, v in counts.items() if k.startswith("dropped:pairs:")
    }
    assert dropped and set(dropped) <= {"below_gap", "unvisited", "different_start", "over_limit"}
    assert counts["pairs:mcts_sibling"] > 0  # what was kept, beside what was dropped


def test_every_sibling_pair_meets_the_gap_and_extends_a_stored_trajectory(cli, mcts_lake):
    pairs = sql_json(cli, mcts_lake, "SELECT * FROM pairs WHERE source = 'mcts_sibling'")
    assert pairs
    violations = sql_json(cli, mcts_lake, "SELECT count(*) AS n FROM pairs WHERE q_chosen - q_rejected < 0.1")
    assert violations[0]["n"] == 0
    trajs = sql_json(cli, mcts_lake, "SELECT task_id, env, instruction, steps FROM trajectories")
    conversations = {
        t["task_id"]: conversation.messages(t["env"], t["instruction"], t["steps"]) for t in trajs
    }
    for pair in pairs:
        prefix = json.loads(pair["prefix"])
        whole = conversations[pair["task_id"]]
        assert whole[: len(prefix)] == prefix
        assert whole[len(prefix)]["content"] == pair["chosen"] != pair["rejected"]


def test_rerun_adds_nothing(cli, mcts_lake, tmp_path):
    tables = ("trajectories", "nodes", "pairs", "tasks")
    query = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in tables)
    before = sql_json(cli, mcts_lake, query)
    config = tmp_path / "mcts.yaml"
    config.write_text("search: mcts\npolicies: [random]\ntasks: 3\nseed: 5\nmcts: {pair_gap: 0.1}\n")
    assert cli("run", "--config", str(config), "--out", str(mcts_lake)).returncode == 0
    assert sql_json(cli, mcts_lake, query) == before


def test_a_crashing_environment_fails_its_task_not_the_run(cli, tmp_path):
    config = tmp_path / "crash.yaml"
    # A third of the items fail: more than the gate's default share, so the user raises it.
    config.write_text(
        "envs: [{name: toy, options: {crash_every: 3}}]\nsearch: mcts\npolicies: [random]\ntasks: 6\n"
        "max_failed_share: 0.5\n"
    )
    out = tmp_path / "data"
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    counts = run_counts(cli, out)
    assert counts["failed:search:env_crash"] == 2
    assert counts["trajectories"] == 4
    failures = sql_json(cli, out, "SELECT stage, detail FROM failures")
    assert len(failures) == 2 and all("crashed" in f["detail"] for f in failures)
