"""Code actions through the command line: MCTS over sandboxed Python cells commits HumanEval
solutions that the hidden tests verified."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import sql_json
from trajforge.environments.code.sandbox import bwrap_path


@pytest.mark.skipif(bwrap_path() is None, reason="no bubblewrap (make test installs it)")
def test_mcts_on_python_commits_verified_solutions(cli, tmp_path):
    out = tmp_path / "data"
    result = cli(
        "run", "--env", "python", "--search", "mcts", "--policy", "random", "--tasks", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr + result.stdout
    rows = sql_json(
        cli,
        out,
        "SELECT t.env_task, r.success, r.verifier_verdict, r.steps "
        "FROM trajectories r JOIN tasks t USING (task_id)",
    )
    assert len(rows) == 2 and all(r["env_task"].startswith("HumanEval/") for r in rows)
    for row in rows:
        assert row["success"] and row["verifier_verdict"] == "pass"
        actions = [s["action"] for s in row["steps"]]
        assert actions[-1] == "submit" and any("def " in a for a in actions[:-1])
    nodes = sql_json(cli, out, "SELECT count(*) AS n FROM nodes")
    assert nodes[0]["n"] > 5  # a tree, branched by replaying cells from reset
