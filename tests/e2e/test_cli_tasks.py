"""`trajforge tasks` on TextWorld, end to end: synthesized tasks land in the lake with their goal,
witness and solve rate; every one is false at reset and reached by its witness in a fresh game;
every candidate is in task_candidates, dropped ones with their reason; a rerun adds nothing."""

from __future__ import annotations

import json

from tests.e2e.helpers import sql_json
from trajforge.environments import goals
from trajforge.environments.base import TaskSpec
from trajforge.environments.textworld import TextWorldEnvironment
from trajforge.synthesizers.tasks import DROPS

ARGS = (
    "--env",
    "textworld",
    "--instances",
    "1",
    "--explore-steps",
    "60",
    "--attempts",
    "1",
    "--no-embeddings",
)


def test_tasks_command_commits_verified_tasks_and_every_candidate(cli, tmp_path):
    out = tmp_path / "lake"
    result = cli("tasks", *ARGS, "--out", str(out), api=None)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "committed" and summary["added"]["tasks"] > 0

    tasks = sql_json(cli, out, "SELECT * FROM tasks ORDER BY task_id")
    assert {t["source"] for t in tasks} >= {"template", "explored"}
    assert all(t["goal"] and t["witness"] and t["generator"] and t["attempts"] == 1 for t in tasks)
    kinds = {f[0] for t in tasks for f in json.loads(t["goal"])}
    assert len(kinds) >= 3, kinds
    reasons = sql_json(cli, out, "SELECT status, reason, count(*) AS n FROM task_candidates GROUP BY ALL")
    assert sum(r["n"] for r in reasons if r["status"] == "kept") == len(tasks)
    assert {r["reason"] for r in reasons if r["status"] == "dropped"} <= set(DROPS)

    env = goals.wrap(TextWorldEnvironment(options={"cut": True, "cook": True, "open": True}))
    try:
        for t in tasks:
            reset = env.reset(TaskSpec(t["env_task"], t["seed"]))
            assert reset.instruction == t["instruction"]
            assert not goals.goal_holds(env, goals.parse_env_task(t["env_task"]).goal)
            outcomes = [env.step(a) for a in t["witness"]]
            assert outcomes[-1].success is True, t
    finally:
        env.close()

    again = cli("tasks", *ARGS, "--out", str(out), api=None)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "already_committed"


def test_tasks_command_refuses_bad_input_with_one_line(cli, tmp_path):
    result = cli("tasks", "--source", "dreamed", "--out", str(tmp_path / "x"), api=None)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --source: 'dreamed'")
    result = cli(
        "tasks", "--decontaminate", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x"), api=None
    )
    assert result.returncode == 2 and "decontaminate: cannot read" in result.stderr
    assert not (tmp_path / "x").exists()
