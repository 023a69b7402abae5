"""What a user sees from `trajforge sql` and `trajforge export` when a command would read outside the
lake, change it, run forever, or delete a folder that no export made (no Prefect involved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trajforge.store.export import MARKER
from trajforge.store.lake import Lake


@pytest.fixture
def place(tmp_path, make):
    """A home, a working folder and a lake (6 trajectories, 3 successful) in separate folders."""
    home, work, out = tmp_path / "home", tmp_path / "work", tmp_path / "lakes" / "project" / "out"
    home.mkdir()
    work.mkdir()
    (home / "notes.txt").write_text("mine")
    (work / "script.py").write_text("print('mine')")
    with Lake.open(out) as lake:
        trajectories = [make.trajectory(i, success=i % 2 == 0, steps=2 + i % 3) for i in range(6)]
        lake.commit(make.batch(trajectories), make.run_row())
    return home, work, out


def trajforge(place, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    home, work, _ = place
    return subprocess.run(
        [sys.executable, "-m", "trajforge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
        env={**os.environ, "HOME": str(home)},
    )


def files(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()}


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one `error:` line of a command that exited 2 and printed nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.mark.parametrize("which", ["dot", "lake", "lake_parent", "inside_lake", "tilde", "home"])
def test_export_overwrite_refuses_the_working_home_or_lake_folder_and_touches_nothing(place, which):
    home, work, out = place
    dest = {
        "dot": ".",
        "lake": str(out),
        "lake_parent": str(out.parent),
        "inside_lake": str(out / "exports"),
        "tilde": "~",
        "home": str(home),
    }[which]
    before = files(home, work, out.parent)
    result = trajforge(place, "export", "--out", str(out), "--dest", dest, "--overwrite")
    refused(result, f"--dest {dest}", "choose a new folder")
    assert files(home, work, out.parent) == before
    assert sorted(p.name for p in out.parent.parent.parent.iterdir()) == ["home", "lakes", "work"]


def test_export_overwrite_refuses_a_folder_that_no_export_made(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "my-dataset"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "train-00000-of-00001.parquet").write_bytes(b"someone else's shard")
    (dest / "README.md").write_text("mine")
    before = files(dest)
    result = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--overwrite")
    refused(result, f"--dest {dest}", MARKER)
    assert files(dest) == before


def test_export_overwrite_replaces_an_earlier_export(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "sft"
    first = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--where", "num_steps >= 3")
    assert first.returncode == 0, first.stderr
    assert json.loads((dest / MARKER).read_text())["rows"] == 2
    again = trajforge(place, "export", "--out", str(out), "--dest", str(dest))
    refused(again, "--overwrite")
    second = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--overwrite")
    assert second.returncode == 0, second.stderr
    marker = json.loads((dest / MARKER).read_text())
    assert marker["rows"] == 3 and marker["format"] == "sft" and marker["snapshot_id"] >= 1
    assert pq.read_table(dest / "data" / "train-00000-of-00001.parquet").num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "lakes", "sft", "work"]  # nothing aside


def exported_ids(dest: Path) -> list[str]:
    return sorted(pq.read_table(dest / "data").column("trajectory_id").to_pylist())  # in task order


def test_export_where_injection_exports_only_successful_trajectories(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "sft"
    result = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--where", "true) OR (true")
    if result.returncode == 0:
        assert exported_ids(dest) == ["traj-0000", "traj-0002", "traj-0004"]
    else:
        refused(result, "--where")
        assert not dest.exists()


def test_export_where_with_a_union_is_refused(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "sft"
    union = "true UNION ALL SELECT * FROM trajectories WHERE NOT success"
    result = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--where", union)
    refused(result, "--where", "UNION")
    subquery = "trajectory_id IN (SELECT trajectory_id FROM trajectories WHERE NOT success) OR true"
    result = trajforge(place, "export", "--out", str(out), "--dest", str(dest), "--where", subquery)
    refused(result, "--where", "subquer")
    assert not dest.exists()


def test_export_where_filters_successful_trajectories(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "sft"
    result = trajforge(
        place, "export", "--out", str(out), "--dest", str(dest), "--where", "env = 'toy' AND num_steps >= 3"
    )
    assert result.returncode == 0, result.stderr
    assert exported_ids(dest) == ["traj-0002", "traj-0004"]
    nothing = trajforge(
        place, "export", "--out", str(out), "--dest", str(tmp_path / "none"), "--where", "env = 'textworld'"
    )
    assert nothing.returncode == 0, nothing.stderr
    assert exported_ids(tmp_path / "none") == []


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd', header = false)",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_text('LAKE/lake/../../../../../../etc/passwd')",
        "SET enable_external_access = true; SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')",
    ],
)
def test_sql_cannot_read_files_outside_the_lake(place, query):
    _, _, out = place
    result = trajforge(place, "sql", "--out", str(out), query.replace("LAKE", str(out)))
    line = refused(result)
    assert "root:" not in line and "/bin/" not in line  # nothing of the file


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM \"ducklake_expire_snapshots\"('lake', older_than => now())",
        "SELECT * FROM ducklake_expire_snapshots/* a comment */('lake', versions => [1, 2])",
        "SELECT * FROM ducklake_delete_orphaned_files(\n-- note\n'lake', cleanup_all => true)",
        "SELECT * FROM LAKE.DELETE_ORPHANED_FILES(cleanup_all => true)",
        'SELECT 1; SELECT * FROM lake."cleanup_old_files"(cleanup_all => true)',
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
        "'SELECT * FROM ducklake_delete_orphaned_files(''lake'', cleanup_all => true)'))",
    ],
)
def test_sql_refuses_hidden_lake_maintenance_and_deletes_nothing(place, query):
    _, _, out = place
    stray = out / "lake" / "main" / "trajectories" / "not-in-the-catalog.parquet"
    stray.write_bytes(next((out / "lake" / "main" / "trajectories").glob("*.parquet")).read_bytes())
    old = time.time() - 86_400
    os.utime(stray, (old, old))  # what delete_orphaned_files would delete, were it run
    before = files(out)
    refused(trajforge(place, "sql", "--out", str(out), query), "read-only")
    assert files(out) == before
    assert trajforge(place, "sql", "--out", str(out), "SELECT count(*) FROM lake.snapshots()").returncode == 0


def test_sql_query_that_runs_forever_is_stopped_by_the_timeout(place):
    _, _, out = place
    started = time.monotonic()
    result = trajforge(
        place, "sql", "--out", str(out), "--timeout", "2", "SELECT sum(range) FROM range(1000000000000)"
    )
    refused(result, "stopped after 2 s", "--timeout")
    assert time.monotonic() - started < 60


def test_sql_ordinary_queries_still_work(place):
    _, _, out = place
    result = trajforge(
        place,
        "sql",
        "--out",
        str(out),
        "--format",
        "json",
        "SELECT env, count(*) AS n, avg(success::int) AS rate FROM trajectories GROUP BY env",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"env": "toy", "n": 6, "rate": 0.5}]
    csv = trajforge(
        place,
        "sql",
        "--out",
        str(out),
        "--format",
        "csv",
        "SELECT trajectory_id, step_index, action FROM steps ORDER BY 1, 2 LIMIT 2",
    )
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines() == [
        '"trajectory_id","step_index","action"',
        '"traj-0000",0,"move 0"',
        '"traj-0000",1,"move 1"',
    ]
    with Lake.open(out, read_only=True) as lake:
        first = lake.snapshots()[-1]["snapshot_id"]
    with Lake.open(out) as lake:
        lake.commit({}, {**lake.runs().to_pylist()[0], "run_id": "run-2"})
    old = trajforge(
        place,
        "sql",
        "--out",
        str(out),
        "--snapshot",
        str(first),
        "--format",
        "csv",
        "SELECT count(*) AS n FROM runs",
    )
    assert old.returncode == 0 and old.stdout.splitlines()[1:] == ["1"], old.stderr
    for query in (
        "DESCRIBE trajectories",
        "SHOW TABLES",
        "SELECT * FROM lake.snapshots()",
        "SELECT count(*) FROM read_parquet('LAKE/lake/main/trajectories/*.parquet')",
        "SELECT 'ducklake_expire_snapshots(' AS quoted",
    ):
        result = trajforge(place, "sql", "--out", str(out), query.replace("LAKE", str(out)))
        assert result.returncode == 0, (query, result.stderr)


def test_sql_csv_writes_nested_columns_as_json_text(place):
    """`SELECT * FROM runs` as CSV: the counts map and the steps list come out as JSON, one row each."""
    import csv as csvlib
    import io

    _, _, out = place
    result = trajforge(place, "sql", "--out", str(out), "--format", "csv", "SELECT run_id, counts FROM runs")
    assert result.returncode == 0, result.stderr
    [row] = list(csvlib.DictReader(io.StringIO(result.stdout)))
    assert isinstance(json.loads(row["counts"]), dict)
    steps = trajforge(
        place,
        "sql",
        "--out",
        str(out),
        "--format",
        "csv",
        "SELECT trajectory_id, steps FROM trajectories ORDER BY 1 LIMIT 1",
    )
    assert steps.returncode == 0, steps.stderr
    [row] = list(csvlib.DictReader(io.StringIO(steps.stdout)))
    assert [s["index"] for s in json.loads(row["steps"])] == [0, 1]


def test_export_formats_from_the_command_line_and_the_exports_list(place, tmp_path):
    _, _, out = place
    dest = tmp_path / "sg"
    args = (
        "export",
        "--out",
        str(out),
        "--dest",
        str(dest),
        "--style",
        "sharegpt",
        "--split",
        "train=0.5,test=0.5",
    )
    with Lake.open(out, read_only=True) as lake:
        snapshot = lake.snapshot_id()
    result = trajforge(place, *args, "--snapshot", str(snapshot))
    assert result.returncode == 0, result.stderr
    assert "3 sft rows" in result.stdout and f"from snapshot {snapshot}" in result.stdout
    assert (dest / "dataset_info.json").is_file() and (dest / "README.md").is_file()
    refused(
        trajforge(
            place,
            "export",
            "--out",
            str(out),
            "--dest",
            str(tmp_path / "x"),
            "--format",
            "prm",
            "--style",
            "openai",
        ),
        "--style trl",
    )
    refused(trajforge(place, *args[:4], str(tmp_path / "y"), "--split", "train=0.9,dev=0.1"), "--split")
    listed = trajforge(place, "exports", "--out", str(out), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["format"], row["style"], row["snapshot_id"], row["status"]) == (
        "sft",
        "sharegpt",
        snapshot,
        "present",
    )
    assert row["dest"] == str(dest)
