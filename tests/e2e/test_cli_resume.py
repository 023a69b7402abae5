"""Runs that the gate refuses, resumed by the same command; two runs of one config at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from tests.e2e.helpers import sql_json
from tests.fake_http import FaultProxy
from trajforge.store.lake import Lake


def _error_line(stderr: str) -> str:
    """The one error line that ends a refused run (the progress lines come before it)."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(x.startswith("error: ") for x in lines[:-1]), stderr
    assert all(x.startswith("run ") for x in lines[:-1]), stderr  # nothing else: no traceback, no logs
    return lines[-1]


def _lake_trajectories(cli, out: Path) -> int:
    if not Lake.exists(out):
        return 0
    return sql_json(cli, out, "SELECT count(*) AS n FROM trajectories")[0]["n"]


def _status(cli, out: Path) -> list[str]:
    return [r["status"] for r in json.loads(cli("runs", "--out", str(out), "--format", "json").stdout)]


def test_a_run_refused_for_an_outage_resumes_with_the_same_command(cli, tiny_server, tmp_path):
    proxy = FaultProxy(tiny_server.url, down=True)  # an outage until `down` is cleared
    out = tmp_path / "data"
    config = tmp_path / "run.yaml"
    model = f"openai:{proxy.url}/v1#{tiny_server.name}"
    config.write_text(
        json.dumps(
            {
                "envs": ["toy"],
                "tasks": 3,
                "max_steps": 8,  # the oracle solves every corridor
                "policies": ["oracle", model],
                "model": {"timeout_s": 5.0},
            }
        )
    )
    args = ("run", "--config", str(config), "--out", str(out))
    try:
        first = cli(*args)
        assert first.returncode == 1, first.stdout + first.stderr
        line = _error_line(first.stderr)
        assert line.startswith("error: validation failed, nothing committed: 3/6 (task, policy) items failed")
        assert (
            "max_failed_share 0.2" in line
            and "run the same command again to retry the 3 failed items" in line
        )
        assert proxy.refused > 0
        assert _lake_trajectories(cli, out) == 0
        assert _status(cli, out) == ["validation_failed"]
        [staged] = (out / "runs").glob("*/staging/trajectories/part-*.parquet")
        kept = {r["trajectory_id"]: r for r in pq.read_table(staged).to_pylist()}
        assert {r["policy"] for r in kept.values()} == {"oracle"}

        proxy.down = False  # the model server is back
        second = cli(*args)
    finally:
        proxy.close()
    assert second.returncode == 0, second.stderr
    assert "Added to the lake: 6 trajectories" in second.stdout
    rows = sql_json(cli, out, "SELECT trajectory_id, policy, created_at, model_calls FROM trajectories")
    by_policy = {p: [r for r in rows if r["policy"] == p] for p in ("oracle", model)}
    assert len(by_policy["oracle"]) == 3 and len(by_policy[model]) == 3
    # The oracle's items finished the first time: kept from staging, not searched again.
    for r in by_policy["oracle"]:
        assert datetime.fromisoformat(r["created_at"]) == kept[r["trajectory_id"]]["created_at"]
    assert all(r["model_calls"] > 0 for r in by_policy[model])
    assert len(proxy.forwarded) >= sum(r["model_calls"] for r in by_policy[model])
    # Each task's success/failure pairs were mined over both attempts' trajectories.
    mixed = sql_json(
        cli,
        out,
        "SELECT count(*) AS n FROM (SELECT task_id FROM trajectories GROUP BY 1 "
        "HAVING bool_or(success) AND bool_or(NOT success))",
    )[0]["n"]
    assert mixed > 0
    assert sql_json(cli, out, "SELECT count(*) AS n FROM pairs WHERE source = 'trajectory'")[0]["n"] == mixed
    # The retried items' failures were superseded by their trajectories.
    assert sql_json(cli, out, "SELECT count(*) AS n FROM failures")[0]["n"] == 0
    assert _status(cli, out) == ["committed"]


def test_a_run_whose_every_item_failed_commits_nothing_and_says_so(cli, tmp_path):
    out = tmp_path / "data"
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"envs": [{"name": "toy", "options": {"crash_every": 1}}], "tasks": 2}))
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert "the batch has no trajectories: all 4 (task, policy) items failed" in line
    assert "run the same command again" in line
    assert _lake_trajectories(cli, out) == 0
    assert _status(cli, out) == ["validation_failed"]
    # Raising the threshold keeps the run id, but an empty batch is never committed.
    config.write_text(
        json.dumps(
            {"envs": [{"name": "toy", "options": {"crash_every": 1}}], "tasks": 2, "max_failed_share": 1.0}
        )
    )
    again = cli("run", "--config", str(config), "--out", str(out))
    assert again.returncode == 1 and "no trajectories" in again.stderr
    assert len(list((out / "runs").iterdir())) == 1


def test_a_second_run_of_the_same_command_exits_2_naming_the_pid(cli, prefect_api, tmp_path):
    out = tmp_path / "data"
    args = [
        "run",
        "--out",
        str(out),
        "--env",
        "toy",
        "--tasks",
        "60",
        "--search",
        "best_of_n",
        "--samples",
        "8",
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    first = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    waiting = None
    try:
        deadline = time.monotonic() + 120
        while not any(f.read_text().strip() for f in out.glob("runs/*/lock")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        second = cli(*args)
        waiting = subprocess.Popen(
            [sys.executable, "-m", "trajforge.cli", *args, "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        still_running = first.poll() is None
        stdout, stderr = first.communicate(timeout=600)
        waited = waiting.communicate(timeout=600)
    finally:
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert still_running
    assert second.returncode == 2
    line = _error_line(second.stderr)
    assert line.startswith("error: run ") and f"already running in process {first.pid}" in line
    assert first.returncode == 0, stderr
    assert "Added to the lake" in stdout
    # With --wait the same command waits for the first and then finds its run in the lake.
    assert waiting.returncode == 0 and "already in the lake" in waited[0], waited[1]
    assert _status(cli, out) == ["committed"]

    # A crash between the commit and the cleanup leaves staging behind: the next run clears it.
    [run_dir] = (out / "runs").iterdir()
    leftover = run_dir / "staging" / "trajectories" / "part-00000-of-00001.parquet"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"left by a crash")
    again = cli(*args)
    assert again.returncode == 0 and "already in the lake" in again.stdout
    assert not (run_dir / "staging").exists()
