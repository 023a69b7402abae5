"""A run that commits as it goes, killed with SIGKILL in its pipeline, between two commits and
in the middle of a commit, then started again with the same command: it ends with the rows of
an uninterrupted run, none twice, and `trajforge runs` shows the killed attempts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trajforge.store.lake import Lake

# Runs `trajforge run ARGS...` in this process after arranging to SIGKILL it at one point.
DRIVER = """
import os, signal, sys
point, at, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "pipeline":  # inside the Beam pipeline, as the at-th search is recorded
    from trajforge.synthesizers import records
    real, seen = records.search_records, []
    def search_records(*a, **k):
        seen.append(1)
        if len(seen) == at:
            die()
        return real(*a, **k)
    records.search_records = search_records
elif point == "between":  # step `at` is in the lake, its bookkeeping is not
    from trajforge.flows.staging import RunDir
    real = RunDir.set_status
    def set_status(self, status, **fields):
        if status == "committed_step" and fields.get("step") == at:
            die()
        return real(self, status, **fields)
    RunDir.set_status = set_status
elif point == "commit":  # step `at`'s Parquet is written, the catalog's COMMIT has not run
    from trajforge.store.lake import Lake
    real = Lake._set_commit_message
    def set_commit_message(self, run, added, step=None):
        if step and step["step"] == at:
            die()
        return real(self, run, added, step)
    Lake._set_commit_message = set_commit_message
from trajforge.cli import app
app(args, prog_name="trajforge")
"""

CONFIG = "envs: [toy]\nsearch: rollout\npolicies: [oracle, random]\ntasks: 8\n"
TABLES = {"tasks": "task_id", "trajectories": "trajectory_id", "pairs": "pair_id", "failures": "item_id"}


def _run(out: Path, config: Path, api: str, point: str = "none", at: int = 0) -> subprocess.CompletedProcess:
    args = ["run", "--config", str(config), "--out", str(out), "--commit-every", "2"]
    return subprocess.run(
        [sys.executable, "-c", DRIVER, point, str(at), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PREFECT_API_URL": api},
    )


def _steps(out: Path, run_id: str) -> list[int]:
    with Lake.open(out, read_only=True) as lake:
        return [n["step"] for n in lake.steps_of(run_id)]


def _rows(out: Path) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """(rows, distinct ids) of each table, and the run's counts."""
    found = {}
    with Lake.open(out, read_only=True) as lake:
        for table, key in TABLES.items():
            row = lake.sql(f"SELECT count(*) AS n, count(DISTINCT {key}) AS ids FROM {table}").to_pylist()[0]
            found[table] = (row["n"], row["ids"])
        (counts,) = lake.sql("SELECT counts FROM runs").column("counts").to_pylist()
    return found, dict(counts)


def test_a_run_killed_anywhere_resumes_to_the_rows_of_an_uninterrupted_run(cli, prefect_api, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    baseline = tmp_path / "baseline"
    whole = cli("run", "--config", str(config), "--out", str(baseline))  # one batch, never killed
    assert whole.returncode == 0, whole.stderr
    with Lake.open(baseline, read_only=True) as lake:
        run_id = lake.runs().column("run_id")[0].as_py()

    out = tmp_path / "data"
    killed = _run(out, config, prefect_api, "pipeline", at=6)  # step 1's searches (step 0 has 4)
    assert killed.returncode == -9, killed.stderr
    assert _steps(out, run_id) == [0]  # the lake shows the run's progress
    killed = _run(out, config, prefect_api, "between", at=1)
    assert killed.returncode == -9, killed.stderr
    assert _steps(out, run_id) == [0, 1]
    killed = _run(out, config, prefect_api, "commit", at=2)
    assert killed.returncode == -9, killed.stderr
    assert _steps(out, run_id) == [0, 1]  # the half commit left nothing in the catalog
    done = _run(out, config, prefect_api)
    assert done.returncode == 0, done.stderr
    assert _steps(out, run_id) == [0, 1, 2, 3]

    (rows, resumed), (whole_rows, whole_counts) = _rows(out), _rows(baseline)
    assert rows == whole_rows
    assert all(n == ids for n, ids in rows.values()), rows  # no id twice
    assert rows["trajectories"][0] == 16
    for key in ("tasks", "trajectories", "successes", "pairs:trajectory"):
        assert resumed.get(key) == whole_counts.get(key), key

    listed = cli("runs", "--out", str(out), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    statuses = sorted(r["status"] for r in json.loads(listed.stdout) if r["run_id"] == run_id)
    assert statuses == ["committed", "stopped", "stopped", "stopped"]
