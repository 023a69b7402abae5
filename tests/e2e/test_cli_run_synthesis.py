"""`trajforge run` with a `synthesis:` section, end to end on TextWorld: the run synthesizes and
verifies its tasks, then searches them; the lake gets the synthesized tasks (goal, setup, witness,
generator), every candidate, and trajectories whose success is the goal's checker. (`from_lake`
planning is tests/flows/test_synthesis_config.py's.)"""

from __future__ import annotations

import json

import yaml

from tests.e2e.helpers import run_counts, sql_json
from trajforge.environments import goals
from trajforge.environments.base import TaskSpec
from trajforge.environments.textworld import TextWorldEnvironment

OPTIONS = {"cut": True, "cook": True, "open": True}
CONFIG = {
    "envs": [{"name": "textworld", "options": {"options": OPTIONS}}],
    "policies": ["random"],
    "max_steps": 5,
    "synthesis": {
        "instances": 1,
        "explore_steps": 30,
        "per_instance": 4,
        "per_template": 1,
        "attempts": 1,
        "embeddings": False,
        "sources": ["template", "explored"],
    },
}


def test_run_synthesizes_verifies_and_searches_its_tasks(cli, tmp_path):
    out = tmp_path / "lake"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "out": str(out)}))
    result = cli("run", "--config", str(cfg))
    assert result.returncode == 0, result.stderr + result.stdout

    tasks = sql_json(cli, out, "SELECT * FROM tasks ORDER BY task_id")
    run_id = sql_json(cli, out, "SELECT run_id FROM runs")[0]["run_id"]
    assert tasks and {t["source"] for t in tasks} <= {"template", "explored"}
    assert all(t["goal"] and t["witness"] and t["generator"] and t["run_id"] == run_id for t in tasks)
    kept = sql_json(cli, out, "SELECT task_id FROM task_candidates WHERE status = 'kept'")
    assert sorted(k["task_id"] for k in kept) == [t["task_id"] for t in tasks]
    counts = run_counts(cli, out)
    assert counts["trajectories"] == len(tasks) and counts["synthesis:textworld:kept:template"] > 0

    steps = sql_json(cli, out, "SELECT trajectory_id, action FROM steps ORDER BY trajectory_id, step_index")
    trajectories = sql_json(cli, out, "SELECT trajectory_id, task_id, success FROM trajectories")
    by_task = {t["task_id"]: t for t in tasks}
    env = goals.wrap(TextWorldEnvironment(options=OPTIONS))
    try:  # each trajectory replayed in a fresh game: its success is whether the goal holds at its end
        for traj in trajectories:
            task = by_task[traj["task_id"]]
            env.reset(TaskSpec(task["env_task"], task["seed"]))
            for step in steps:
                if step["trajectory_id"] == traj["trajectory_id"]:
                    env.step(step["action"])
            goal = goals.canonical_goal(json.loads(task["goal"]))
            assert traj["success"] == goals.goal_holds(env, goal), (traj, task["instruction"])
    finally:
        env.close()


def test_from_lake_without_synthesized_tasks_is_one_line(cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "out": str(tmp_path / "x"), "synthesis": {"from_lake": True}}))
    result = cli("run", "--config", str(cfg))
    assert result.returncode == 2 and "synthesis.from_lake: the lake" in result.stderr
    assert not (tmp_path / "x").exists()
