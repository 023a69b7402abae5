"""Whole runs through the command line, against a real Prefect server, TextWorld and DuckLake."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trajforge.store.lake import Lake


def rows(cli, out: Path, query: str) -> list[dict]:
    result = cli("sql", "--out", str(out), "--format", "csv", query)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def count(cli, out: Path, table: str) -> int:
    return int(rows(cli, out, f"SELECT count(*) AS n FROM {table}")[0]["n"])


def snapshots(out: Path) -> int:
    with Lake.open(out, read_only=True) as lake:
        return lake.snapshot_count()


@pytest.fixture(scope="module")
def lake(cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "data"
    result = cli("run", "--out", str(out), "--tasks", "4")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Added to the lake" in result.stdout
    return out


def test_textworld_trajectories_are_verified_by_the_game(cli, lake):
    stats = rows(
        cli, lake, "SELECT env, count(*) AS n, avg(success::int) AS rate FROM trajectories GROUP BY env"
    )
    assert [r["env"] for r in stats] == ["textworld"]
    assert int(stats[0]["n"]) == 8  # 4 tasks x (oracle, random)
    assert float(stats[0]["rate"]) > 0
    oracle = rows(cli, lake, "SELECT success, verifier_verdict FROM trajectories WHERE policy = 'oracle'")
    assert all(r["success"] == "true" and r["verifier_verdict"] == "pass" for r in oracle)


def test_steps_view_has_one_row_per_step(cli, lake):
    total = rows(cli, lake, "SELECT sum(num_steps) AS n FROM trajectories")[0]["n"]
    assert count(cli, lake, "steps") == int(total)


def test_csv_is_header_and_rows_only(cli, lake):
    result = cli("sql", "--out", str(lake), "--format", "csv", "SELECT task_id FROM tasks ORDER BY 1")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == '"task_id"' and len(lines) == 1 + 4


def test_rerunning_the_same_command_adds_nothing(cli, lake):
    before = (
        count(cli, lake, "trajectories"),
        count(cli, lake, "tasks"),
        count(cli, lake, "runs"),
        snapshots(lake),
    )
    result = cli("run", "--out", str(lake), "--tasks", "4")
    assert result.returncode == 0, result.stderr
    assert "already in the lake" in result.stdout
    after = (
        count(cli, lake, "trajectories"),
        count(cli, lake, "tasks"),
        count(cli, lake, "runs"),
        snapshots(lake),
    )
    assert after == before


def test_another_seed_adds_rows_and_an_old_snapshot_still_reads(cli, lake):
    first_snapshot = max(s["snapshot_id"] for s in Lake.open(lake, read_only=True).snapshots())
    before = count(cli, lake, "trajectories")
    result = cli("run", "--out", str(lake), "--tasks", "4", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert count(cli, lake, "trajectories") == before + 8
    # Off a terminal, progress comes as plain lines on stderr (items done, successes, rates, ETA).
    assert any(line.startswith("run ") and " items, " in line for line in result.stderr.splitlines())
    old = cli(
        "sql",
        "--out",
        str(lake),
        "--snapshot",
        str(first_snapshot),
        "--format",
        "json",
        "SELECT count(*) AS n FROM trajectories",
    )
    assert json.loads(old.stdout) == [{"n": before}]


def test_runs_lists_status_and_counts(cli, lake):
    result = cli("runs", "--out", str(lake), "--format", "json")
    runs = json.loads(result.stdout)
    assert runs and all(r["status"] == "committed" for r in runs)
    assert json.loads(runs[0]["kept"])["trajectories"] == 8


def test_export_sft_writes_trl_conversations(cli, lake, tmp_path):
    dest = tmp_path / "sft"
    result = cli("export", "--out", str(lake), "--format", "sft", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(dest / "data" / "train-00000-of-00001.parquet")
    successes = count(cli, lake, "trajectories WHERE success")
    assert table.num_rows == successes
    messages = table.column("messages")[0].as_py()
    assert [m["role"] for m in messages[:3]] == ["system", "user", "assistant"]
    assert {m["role"] for m in messages[3:]} <= {"user", "assistant"}
    again = cli("export", "--out", str(lake), "--format", "sft", "--dest", str(dest))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_sql_refuses_writes(cli, lake):
    before = snapshots(lake)
    result = cli("sql", "--out", str(lake), "DELETE FROM trajectories")
    assert result.returncode == 2
    assert "read-only" in result.stderr
    assert snapshots(lake) == before


@pytest.mark.parametrize(
    ("args", "yaml_text", "field"),
    [
        ([], "tasks: 2\nbudget: 3\n", "budget"),
        (["--env", "nosuchgame"], None, "env"),
        (["--tasks", "-1"], None, "tasks"),
        (["--max-steps", "0"], None, "max_steps"),
        (["--policy", "gpt-9"], None, "policies"),
        (["--judge", "random"], None, "judge: 'random' is not a model spec"),
        ([], "critique: true\n", "critique: needs a judge model"),
        ([], "search: mcts\nenvs: [webapp]\nmcts: {branching: snapshot}\n", "mcts.branching: webapp"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, lake, tmp_path, args, yaml_text, field):
    fresh = tmp_path / "fresh"
    extra = []
    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "run.yaml")]
    before = snapshots(lake)
    for out in (fresh, lake):
        result = cli("run", "--out", str(out), *args, *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), result.stderr
    assert not fresh.exists()
    assert snapshots(lake) == before


def test_a_corrupted_staged_batch_is_refused(cli, tmp_path):
    out = tmp_path / "data"
    args = ("run", "--out", str(out), "--env", "toy", "--tasks", "5")
    staged = cli(*args, "--dry-run")
    assert staged.returncode == 0, staged.stderr
    assert "nothing committed" in staged.stdout
    before = snapshots(out) if Lake.exists(out) else 0
    [part] = (out / "runs").glob("*/staging/trajectories/part-*.parquet")
    table = pq.read_table(part).to_pylist()
    table[0]["trajectory_id"] = None
    table[1]["total_reward"] = 5.0
    pq.write_table(pq.read_table(part).from_pylist(table, schema=pq.read_schema(part)), part)

    result = cli(*args)
    assert result.returncode == 1
    assert "validation failed, nothing committed" in result.stderr
    report_path = Path(result.stderr.split("report: ")[1].split(")")[0])
    report = json.loads(report_path.read_text())
    failed = {(e["column"], e["expectation"]) for e in report["expectations"] if not e["success"]}
    assert ("trajectory_id", "expect_column_values_to_not_be_null") in failed
    assert ("total_reward", "expect_column_values_to_be_between") in failed
    assert (snapshots(out) if Lake.exists(out) else 0) == before
    if Lake.exists(out):
        assert count(cli, out, "trajectories") == 0
    listed = json.loads(cli("runs", "--out", str(out), "--format", "json").stdout)
    assert [r["status"] for r in listed] == ["validation_failed"]


def test_the_flow_runs_are_recorded_on_the_prefect_server(prefect_api, lake):
    request = urllib.request.Request(
        f"{prefect_api}/flow_runs/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        runs = json.loads(resp.read())
    assert any(r["state_type"] == "COMPLETED" for r in runs)


def test_a_run_without_a_server_uses_a_temporary_one(cli, tmp_path):
    result = cli("run", "--out", str(tmp_path / "data"), "--env", "toy", "--tasks", "3", api=None)
    assert result.returncode == 0, result.stderr
    assert "Added to the lake: 6 trajectories" in result.stdout


def test_beam_options_pass_through(cli, tmp_path):
    out = tmp_path / "data"
    result = cli(
        "run",
        "--out",
        str(out),
        "--env",
        "toy",
        "--tasks",
        "3",
        "--",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert result.returncode == 0, result.stderr
    assert count(cli, out, "trajectories") == 6


def test_help_does_not_import_the_heavy_stack(repo_root):
    import subprocess
    import sys

    heavy = "('prefect', 'apache_beam', 'duckdb', 'great_expectations', 'textworld')"
    code = f"import sys, trajforge.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"
