from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from trajforge.schemas.arrow import TABLES, TRAJECTORIES, to_table
from trajforge.store.lake import (
    ORPHAN_MIN_AGE_S,
    Lake,
    LakeError,
    ReadOnlyError,
    duck_type,
    read_statements,
)


def count(lake: Lake, table: str) -> int:
    return lake.sql(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def test_duck_types_match_arrow():
    assert duck_type(TABLES["runs"][0].field("counts").type) == "MAP(VARCHAR, BIGINT)"
    assert duck_type(TRAJECTORIES.field("created_at").type) == "TIMESTAMPTZ"
    assert duck_type(TRAJECTORIES.field("steps").type).startswith('STRUCT("index" INTEGER')


def test_commit_adds_rows_and_round_trips_types(out, make):
    with Lake.open(out) as lake:
        result = lake.commit(make.batch([make.trajectory(i) for i in range(4)]), make.run_row())
        assert result.added == {"tasks": 3, "trajectories": 4, "runs": 1}
        assert result.snapshot_id == lake.snapshots()[-1]["snapshot_id"]
        assert lake.snapshots()[-1]["commit_message"] == "run run-1"
        stored = lake.sql("SELECT * FROM trajectories ORDER BY trajectory_id")
        assert stored.schema.equals(TRAJECTORIES)
        expected = to_table([make.trajectory(0)], TRAJECTORIES)
        assert stored.slice(0, 1).to_pylist() == expected.to_pylist()
        runs = lake.runs()
        assert runs.schema.field("counts").type == TABLES["runs"][0].field("counts").type
        assert dict(runs.column("counts")[0].as_py()) == {"kept": 2, "dropped:timeout": 1}
        assert lake.has_run("run-1") and not lake.has_run("run-2")
    assert list((out / "lake").rglob("*.parquet"))  # rows land in Parquet, not the catalog


def test_same_batch_again_adds_nothing_and_no_snapshot(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(i) for i in range(4)]), make.run_row())
        snapshots = lake.snapshot_count()
        result = lake.commit(make.batch([make.trajectory(i) for i in range(4)]), make.run_row())
        assert result.snapshot_id is None
        assert sum(result.added.values()) == 0
        assert lake.snapshot_count() == snapshots
        assert count(lake, "trajectories") == 4


def test_duplicate_ids_within_a_batch_keep_the_first(out, make):
    first, second = make.trajectory(7), make.trajectory(7)
    second["instruction"] = "a retried bundle re-emitted this"
    with Lake.open(out) as lake:
        result = lake.commit(make.batch([first, second, make.trajectory(8)]), make.run_row())
        assert result.added["trajectories"] == 2
        rows = lake.sql("SELECT instruction FROM trajectories WHERE trajectory_id = 'traj-0007'")
        assert rows.column("instruction").to_pylist() == ["reach cell 7"]


def test_partly_new_batch_adds_only_new_ids(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(i) for i in range(3)]), make.run_row())
        more = make.batch([make.trajectory(i) for i in range(5)])
        result = lake.commit(more, make.run_row("run-2"))
        assert result.added == {"tasks": 0, "trajectories": 2, "runs": 1}
        assert count(lake, "trajectories") == 5


def test_commit_with_wrong_schema_changes_nothing(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
        snapshots = lake.snapshot_count()
        bad = make.batch([make.trajectory(1)])
        bad["trajectories"] = bad["trajectories"].drop_columns(["success"])
        with pytest.raises(LakeError, match="missing columns \\['success'\\]"):
            lake.commit(bad, make.run_row("run-2"))
        assert lake.snapshot_count() == snapshots
        assert (count(lake, "tasks"), count(lake, "trajectories"), count(lake, "runs")) == (3, 1, 1)


def test_error_inside_the_transaction_rolls_everything_back(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
        snapshots = lake.snapshot_count()
        run = make.run_row("run-2")
        # Arrow accepts a map with a repeated key; DuckDB refuses it while inserting the run
        # row, after the tasks and trajectories of this commit were already inserted.
        run["counts"] = [("kept", 1), ("kept", 2)]
        with pytest.raises(LakeError, match="unchanged") as info:
            lake.commit(make.batch([make.trajectory(i) for i in range(1, 4)]), run)
        assert info.value.__cause__ is not None
        assert lake.snapshot_count() == snapshots
        assert (count(lake, "trajectories"), count(lake, "runs")) == (1, 1)
        # The connection is still usable after the rollback.
        retry = lake.commit(make.batch([make.trajectory(1)]), make.run_row("run-3"))
        assert retry.added["trajectories"] == 1


def test_null_primary_key_is_refused(out, make):
    row = make.trajectory(0)
    row["trajectory_id"] = None
    with Lake.open(out) as lake, pytest.raises(LakeError, match="no trajectory_id"):
        lake.commit(make.batch([row]), make.run_row())


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO trajectories (trajectory_id) VALUES ('x')",
        "DELETE FROM trajectories",
        "UPDATE runs SET status = 'x'",
        "CREATE TABLE x (a INT)",
        "DROP TABLE runs",
        "ATTACH 'other.db' AS other",
        "COPY trajectories TO 'x.csv'",
        "SET threads = 1",
        "CALL lake.expire_snapshots(older_than => now())",
        "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
        "EXPLAIN ANALYZE DELETE FROM trajectories",
        "SELECT 1; DELETE FROM trajectories",
    ],
)
def test_sql_refuses_writes(out, query, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    with Lake.open(out, read_only=True) as lake:
        with pytest.raises(ReadOnlyError, match="trajforge sql is read-only"):
            lake.sql(query)
        assert count(lake, "trajectories") == 1


def test_read_statements_allows_reads():
    for query in ["SELECT 1", "FROM runs", "DESCRIBE runs", "SHOW TABLES", "EXPLAIN SELECT 1"]:
        assert read_statements(query)


def test_sql_reads_and_read_only_attach_guards(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(i) for i in range(2)]), make.run_row())
    with Lake.open(out, read_only=True) as lake:
        table = lake.sql("SELECT trajectory_id FROM trajectories ORDER BY 1")
        assert table.column("trajectory_id").to_pylist() == ["traj-0000", "traj-0001"]
        assert "trajectories" in lake.sql("SHOW TABLES").column("name").to_pylist()
        with pytest.raises(LakeError, match="read-only"):
            lake.commit(make.batch([make.trajectory(3)]), make.run_row("run-2"))
        with pytest.raises(LakeError):
            lake.sql("SELECT no_such_column FROM trajectories")


def test_steps_view_has_one_row_per_step(out, make):
    with Lake.open(out) as lake:
        two = make.batch([make.trajectory(0, steps=3), make.trajectory(1, steps=5)])
        lake.commit(two, make.run_row())
        steps = lake.sql("SELECT * FROM steps ORDER BY trajectory_id, step_index")
    assert steps.num_rows == 8
    assert steps.column_names == [
        "trajectory_id",
        "task_id",
        "env",
        "search",
        "policy",
        "run_id",
        "step_index",
        "observation",
        "action",
        "thought",
        "reward",
        "done",
        "value",
        "success",
        "tool_name",
        "tool_arguments",
        "tool_result",
    ]
    first = steps.slice(0, 1).to_pylist()[0]
    assert first["step_index"] == 0 and first["thought"] == "go on" and first["success"] is True


def test_steps_view_is_in_the_catalog_for_any_duckdb_user(out, make):
    import duckdb

    from trajforge.store.lake import extension_path

    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0, steps=4)]), make.run_row())
    con = duckdb.connect(config={"autoload_known_extensions": "false"})
    try:
        con.execute(f"LOAD '{extension_path()}'")
        for path in lake.catalog.extensions():
            con.execute(f"LOAD '{path}'")
        con.execute(f"ATTACH '{lake.catalog.attach_target()}' AS mine (READ_ONLY)")
        assert con.execute("SELECT count(*) FROM mine.steps").fetchone() == (4,)
    finally:
        con.close()


def test_reading_an_old_snapshot(out, make):
    with Lake.open(out) as lake:
        result = lake.commit(make.batch([make.trajectory(i) for i in range(2)]), make.run_row())
        first = result.snapshot_id
        lake.commit(make.batch([make.trajectory(i) for i in range(2, 5)]), make.run_row("run-2"))
    with Lake.open(out, snapshot=first) as old:
        assert old.read_only
        assert count(old, "trajectories") == 2
        assert count(old, "steps") == 6
        assert not old.has_run("run-2")
    with Lake.open(out, read_only=True) as now:
        assert count(now, "trajectories") == 5
    with pytest.raises(LakeError, match="snapshot"):
        Lake.open(out, snapshot=999)


def test_reopening_is_idempotent(out, make):
    assert not Lake.exists(out)
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
        snapshots = lake.snapshot_count()
    assert Lake.exists(out)
    with Lake.open(out) as lake:
        assert lake.snapshot_count() == snapshots
        assert count(lake, "trajectories") == 1
        assert [r["run_id"] for r in lake.runs().to_pylist()] == ["run-1"]


def test_runs_are_ordered_by_start(out, make):
    later = make.now.replace(hour=9)
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row("run-b", started_at=later))
        lake.commit(make.batch([make.trajectory(1)]), make.run_row("run-a", started_at=make.now))
        assert lake.runs().column("run_id").to_pylist() == ["run-a", "run-b"]


def test_read_only_open_of_a_missing_lake_creates_nothing(tmp_path):
    out = tmp_path / "nowhere"
    assert not Lake.exists(out)
    with pytest.raises(LakeError, match="no lake at .*trajforge run --out"):
        Lake.open(out, read_only=True)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_moved_output_directory_still_opens(out, tmp_path, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    moved = tmp_path / "moved"
    out.rename(moved)
    with Lake.open(moved, read_only=True) as lake:
        assert count(lake, "trajectories") == 1


def test_empty_tables_are_fine(out, make):
    empty = {"trajectories": pa.Table.from_pylist([], schema=TRAJECTORIES)}
    with Lake.open(out) as lake:
        result = lake.commit(empty, make.run_row())
        assert result.added == {"trajectories": 0, "runs": 1}
        assert result.snapshot_id is not None


def test_a_duckdb_file_lake_open_twice_in_one_process_is_a_clear_error(out):
    with Lake.open(out, catalog="duckdb"), pytest.raises(LakeError, match="already open in this process"):
        Lake.open(out, read_only=True)


HOLD = """
import sys, time
from trajforge.store.lake import Lake
with Lake.open(sys.argv[1], read_only=True):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", time.time(), flush=True)
"""


def hold(out, seconds: float) -> subprocess.Popen:
    """Another process reading the lake (as `trajforge sql` does) for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_writer_waits_for_a_reader_that_holds_a_duckdb_file_lake(out, make):
    with Lake.open(out, catalog="duckdb") as lake:  # the catalog of older lakes: one process at a time
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    holder = hold(out, 3)
    try:
        started = time.monotonic()
        with Lake.open(out, lock_timeout_s=60) as lake:
            entered, waited = time.time(), time.monotonic() - started
            # The writer got in once the reader had let go (its process may not have exited yet).
            word, released = holder.stdout.readline().split()
            assert word == "released" and float(released) <= entered
            result = lake.commit(make.batch([make.trajectory(1)]), make.run_row("run-2"))
        assert result.added["trajectories"] == 1
        assert 1 < waited < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_that_waits_too_long_names_the_holder(out, make):
    with Lake.open(out, catalog="duckdb") as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    holder = hold(out, 30)
    try:
        started = time.monotonic()
        with pytest.raises(LakeError, match=f"in use by PID {holder.pid} \\(.*python.*\\); waited 1 s"):
            Lake.open(out, lock_timeout_s=1)
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    with Lake.open(out, read_only=True) as lake:
        assert count(lake, "trajectories") == 1


CRASH = """
import os, sys
from trajforge.store.lake import Lake
sys.path.insert(0, sys.argv[2])
from conftest import batch, run_row, trajectory

lake = Lake.open(sys.argv[1])
# Killed after DuckLake wrote the batch's Parquet, before the catalog's COMMIT.
lake._set_commit_message = lambda *args: os._exit(9)
lake.commit(batch([trajectory(i) for i in range(10, 20)]), run_row("run-crashed"))
"""


def parquet_files(out) -> set:
    return set((out / "lake").rglob("*.parquet"))


def test_a_crashed_commit_leaves_no_orphans_after_the_next_writer_opens(out, make):
    with Lake.open(out) as lake:
        lake.commit(make.batch([make.trajectory(i) for i in range(3)]), make.run_row())
    committed = parquet_files(out)
    crash = subprocess.run([sys.executable, "-c", CRASH, str(out), str(Path(__file__).parent)])
    assert crash.returncode == 9
    orphans = parquet_files(out) - committed
    assert orphans, "the crashed commit wrote no Parquet"
    an_hour_ago = time.time() - 2 * ORPHAN_MIN_AGE_S
    for path in orphans:
        os.utime(path, (an_hour_ago, an_hour_ago))
    young = out / "lake" / "main" / "trajectories" / "being-written-right-now.parquet"
    young.write_bytes(next(iter(orphans)).read_bytes())  # a concurrent writer's file: kept
    with Lake.open(out) as lake:
        assert count(lake, "trajectories") == 3
        assert not lake.has_run("run-crashed")
    assert parquet_files(out) == committed | {young}
    with Lake.open(out, read_only=True) as lake:
        assert count(lake, "trajectories") == 3


def test_a_lake_from_before_the_tool_columns_keeps_a_tool_calls_fields(out, make, monkeypatch):
    """Steps gained fields (a tool call's name, arguments, result; the admissible actions): an older
    lake's step struct
    catches up when opened for writing, so an insert does not drop them."""
    import trajforge.store.tables as tables_module

    new_step = TRAJECTORIES.field("steps").type.value_type
    old_step = pa.struct([f for f in new_step if not f.name.startswith("tool_") and f.name != "admissible"])
    old = TRAJECTORIES.set(TRAJECTORIES.get_field_index("steps"), pa.field("steps", pa.list_(old_step)))
    monkeypatch.setattr(tables_module, "TABLES", {**TABLES, "trajectories": (old, "trajectory_id")})
    old_view = tables_module.STEPS_VIEW.replace(", s.tool_name, s.tool_arguments, s.tool_result", "")
    monkeypatch.setattr(tables_module, "STEPS_VIEW", old_view)
    Lake.open(out).close()
    monkeypatch.undo()
    row = make.trajectory(0)
    row["steps"][0].update(
        tool_name="view_cart", tool_arguments="{}", tool_result='{"total": 0}', admissible=["a", "b"]
    )
    with Lake.open(out) as lake:
        lake.commit(make.batch([row]), make.run_row())
        stored = lake.sql("SELECT tool_name, tool_arguments, tool_result FROM steps WHERE step_index = 0")
        offered = lake.sql("SELECT steps[1].admissible AS a FROM trajectories").to_pylist()
    assert offered == [{"a": ["a", "b"]}]
    assert stored.to_pylist() == [
        {"tool_name": "view_cart", "tool_arguments": "{}", "tool_result": '{"total": 0}'}
    ]
