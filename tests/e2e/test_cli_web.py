"""Web runs through the command line: MiniWoB++ by MCTS in a real Chromium, the built-in shop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import sql_json

# Two tasks of different kinds (a click, typed text), one per Beam worker: the same run on five
# tasks (each solved in 120 env steps) is bench/miniwob_cli.py, kept out of `make test` for time.
SOLVABLE = ["click-button", "enter-text"]


@pytest.fixture(scope="module")
def miniwob_lake(cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("miniwob") / "data"
    config = out.parent / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "envs": [{"name": "miniwob", "options": {"tasks": SOLVABLE, "screenshots": True}}],
                "search": "mcts",
                "policies": ["random"],
                "tasks": len(SOLVABLE),
                "max_steps": 6,
                "budget": {"env_steps": 120},
            }
        )
    )
    result = cli(
        "run",
        "--config",
        str(config),
        "--out",
        str(out),
        "--",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return out


def test_mcts_verifies_a_success_on_each_task(cli, miniwob_lake):
    rows = sql_json(
        cli,
        miniwob_lake,
        "SELECT t.env_task, bool_or(r.success) AS solved FROM trajectories r "
        "JOIN tasks t USING (task_id) GROUP BY 1 ORDER BY 1",
    )
    assert {r["env_task"]: r["solved"] for r in rows} == {task: True for task in SOLVABLE}


def test_screenshots_are_artifacts_not_inline(cli, miniwob_lake):
    shots = sql_json(
        cli,
        miniwob_lake,
        "SELECT a.trajectory_id, a.step_index, a.mime, octet_length(a.data) AS n, "
        "r.num_steps FROM artifacts a JOIN trajectories r USING (trajectory_id)",
    )
    assert shots and all(s["mime"] == "image/png" and s["n"] > 100 for s in shots)
    per_traj: dict[str, set] = {}
    for s in shots:
        per_traj.setdefault(s["trajectory_id"], set()).add(s["step_index"])
    lengths = {s["trajectory_id"]: s["num_steps"] for s in shots}
    assert all(indices == set(range(lengths[t] + 1)) for t, indices in per_traj.items())
    inline = sql_json(cli, miniwob_lake, "SELECT count(*) AS n FROM steps WHERE observation LIKE '%PNG%'")
    assert inline[0]["n"] == 0


def test_the_shop_runs_with_verified_successes_on_every_template(cli, tmp_path):
    out = tmp_path / "data"
    # The oracle only: the assertion is about its verified successes (no random episodes to wait for).
    args = ["run", "--env", "webapp", "--tasks", "5", "--max-steps", "15", "--policy", "oracle"]
    result = cli(*args, "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = sql_json(
        cli,
        out,
        "SELECT t.env_task, r.policy, r.success, r.verifier_verdict FROM trajectories r "
        "JOIN tasks t USING (task_id) WHERE r.policy = 'oracle'",
    )
    from trajforge.environments.webapp.tasks import TEMPLATES

    assert {r["env_task"] for r in rows} == set(TEMPLATES)
    assert all(r["success"] and r["verifier_verdict"] == "pass" for r in rows)


def _chromium_browsers(root_pid: int) -> list[int]:
    """Browser processes (Chromium whose parent is not Chromium) under root_pid."""
    from trajforge.environments.browser.procs import is_chromium, parent_pids, process_tree

    parents = parent_pids()
    return [
        pid for pid in process_tree(root_pid) if is_chromium(pid) and not is_chromium(parents.get(pid, 0))
    ]


def test_killing_chromium_mid_run_loses_nothing(cli, prefect_api, tmp_path):
    """Three episodes in flight in one Chromium; it is killed mid-run: each is replayed in a
    new browser, the run completes, every task has its verified success, nothing failed."""
    out = tmp_path / "data"
    args = ["run", "--env", "webapp", "--tasks", "6", "--policy", "oracle", "--concurrency", "3"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    run = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not _chromium_browsers(run.pid) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # episodes are under way
        browsers = _chromium_browsers(run.pid)
        assert browsers, "no Chromium appeared"
        for pid in browsers:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=600)
    finally:
        run.kill()
    assert run.returncode == 0, stderr + stdout
    assert "replaying the episode" in stderr  # the killed episodes were retried
    rows = sql_json(cli, out, "SELECT count(*) AS n, bool_and(success) AS all_solved FROM trajectories")
    assert rows == [{"n": 6, "all_solved": True}]
    assert sql_json(cli, out, "SELECT count(*) AS n FROM failures") == [{"n": 0}]
