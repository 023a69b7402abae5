"""Runs with a search that never returns (a wedged environment step): the run still ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.helpers import run_counts, sql_json
from trajforge.store.lake import Lake


def test_a_hanging_search_fails_with_timeout_and_the_run_commits_the_rest(cli, tmp_path):
    config = tmp_path / "hang.yaml"
    # One task of ten never returns from its second step; its deadline is 1 * 1.1 + 2 = 3.1 s.
    config.write_text(
        "envs: [{name: toy, options: {hang_every: 10}}]\nsearch: rollout\npolicies: [oracle]\n"
        "tasks: 10\nbudget: {wall_s: 1}\ndeadline_margin_s: 2\n"
    )
    out = tmp_path / "data"
    start = time.monotonic()
    result = cli("run", "--config", str(config), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    assert time.monotonic() - start < 240  # the hung thread (it sleeps a day) holds neither the run nor exit
    failures = sql_json(cli, out, "SELECT stage, reason, detail FROM failures")
    assert [(f["stage"], f["reason"]) for f in failures] == [("search", "timeout")]
    assert "deadline of 3.1s" in failures[0]["detail"]
    counts = run_counts(cli, out)
    assert counts["failed:search:timeout"] == 1 and counts["trajectories"] == 9


def _wait_for_running(runs: Path, proc: subprocess.Popen, timeout_s: float = 180) -> Path:
    """The manifest of the run once it says `running` (its pipeline starts next)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for manifest in runs.glob("*/manifest.json"):
            if json.loads(manifest.read_text())["status"] == "running":
                return manifest
        time.sleep(0.5)
    raise AssertionError(f"the run did not start: {proc.stderr.read() if proc.poll() is not None else ''}")


def test_ctrl_c_stops_a_run_whose_searches_hang(prefect_api, tmp_path):
    config = tmp_path / "hang.yaml"
    # Every search hangs, and its deadline is eleven minutes away: only Ctrl-C ends this run.
    config.write_text(
        "envs: [{name: toy, options: {hang_every: 1}}]\nsearch: rollout\npolicies: [oracle]\n"
        "tasks: 2\nbudget: {wall_s: 600}\n"
    )
    out = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", "run", "--config", str(config), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
    )
    try:
        running = _wait_for_running(out / "runs", proc)
        time.sleep(8)  # the pipeline is up and both searches are stuck in their second step
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - interrupted < 10, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: run ") and "interrupted" in stderr
    assert not Lake.exists(out)  # nothing committed
    assert json.loads(running.read_text())["status"] == "running"  # the same command runs it again
