"""Tool actions through the command line: MCTS over shop-api calls commits verified successes, and
the lake keeps each call (name, arguments as JSON), its result, and the declared tools."""

from __future__ import annotations

import json

from tests.e2e.helpers import sql_json
from trajforge.schemas.toolcalls import decode_call


def test_mcts_on_shop_api_commits_verified_tool_call_trajectories(cli, tmp_path):
    out = tmp_path / "data"
    args = ["run", "--env", "shop-api", "--search", "mcts", "--policy", "random", "--tasks", "5"]
    result = cli(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr + result.stdout
    rows = sql_json(
        cli,
        out,
        "SELECT t.env_task, r.success, r.verifier_verdict, r.tools, r.steps "
        "FROM trajectories r JOIN tasks t USING (task_id)",
    )
    from trajforge.environments.webapp.tasks import TEMPLATES

    assert {r["env_task"] for r in rows} == set(TEMPLATES)
    assert all(r["success"] and r["verifier_verdict"] == "pass" for r in rows)
    for row in rows:
        declared = {t["function"]["name"] for t in json.loads(row["tools"])}
        for step in row["steps"]:
            call = decode_call(step["action"])
            assert step["tool_name"] == call.name in declared
            assert json.loads(step["tool_arguments"]) == call.arguments
            assert json.loads(step["tool_result"])  # the tool's JSON answer
    calls = sql_json(cli, out, "SELECT count(*) AS n, count(tool_name) AS calls FROM steps")
    assert calls[0]["n"] == calls[0]["calls"] > 0
