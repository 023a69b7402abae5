"""Lakes on SQLite and PostgreSQL catalogs: two writers and a reader at once, in three processes.

Each writer commits batches of its own ids plus ids both writers commit; the reader queries all
the while. In the end every id is in the lake once, no commit was lost, the reader never failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import postgres
from trajforge.schemas.errors import LakeError
from trajforge.store import catalogs
from trajforge.store.lake import Lake

COMMITS, OWN, SHARED = 4, 12, 4

WRITER = """
import sys
sys.path.insert(0, sys.argv[4])
from conftest import batch, run_row, trajectory
from trajforge.store.lake import Lake

out, catalog, writer = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
COMMITS, OWN, SHARED = map(int, sys.argv[5:8])
with Lake.open(out, catalog=catalog) as lake:
    for c in range(COMMITS):
        rows = [trajectory(1000 * writer + OWN * c + i) for i in range(OWN)]
        rows += [trajectory(900_000 + SHARED * c + i) for i in range(SHARED)]  # both write these
        lake.commit(batch(rows), run_row(f"w{writer}-{c}"))
print("done", flush=True)
"""

READER = """
import json, sys, time
from trajforge.store.lake import Lake

out, catalog, stop = sys.argv[1], sys.argv[2] or None, sys.argv[3]
import os
reads, errors, seen = 0, [], []
while not os.path.exists(stop):
    try:
        with Lake.open(out, read_only=True, catalog=catalog, lock_timeout_s=0) as lake:
            seen.append(lake.sql("SELECT count(*) AS n FROM trajectories").column("n")[0].as_py())
        reads += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.02)
print(json.dumps({"reads": reads, "errors": errors, "seen": seen}), flush=True)
"""


def _concurrently(out: Path, catalog: str, tmp: Path) -> dict:
    here = str(Path(__file__).parent)
    with Lake.open(out, catalog=catalog or None) as lake:  # the lake exists before anyone reads it
        assert lake.catalog.kind == (catalogs.parse(catalog, out).kind if catalog else "sqlite")
    stop = tmp / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), catalog, str(stop)], stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(out),
                catalog,
                str(w),
                here,
                *map(str, (COMMITS, OWN, SHARED)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    try:
        for w in writers:
            stdout, stderr = w.communicate(timeout=240)
            assert w.returncode == 0, stderr[-2000:]
        time.sleep(0.3)  # a read or two after the last commit
        stop.touch()
        report = json.loads(reader.communicate(timeout=60)[0])
    finally:
        for p in (*writers, reader):
            p.kill()
            p.wait()
    return report


def _check(out: Path, catalog: str, report: dict) -> None:
    assert report["errors"] == [], report["errors"][:3]  # the reader was never refused
    assert report["reads"] >= 3
    assert report["seen"] == sorted(report["seen"])  # it saw commits land, never a half commit
    with Lake.open(out, read_only=True, catalog=catalog or None) as lake:
        rows = lake.sql("SELECT trajectory_id FROM trajectories").column(0).to_pylist()
        runs = lake.sql("SELECT run_id FROM runs").column(0).to_pylist()
    assert len(rows) == len(set(rows)), "an id was committed twice"
    assert len(rows) == 2 * COMMITS * OWN + COMMITS * SHARED  # none lost
    assert sorted(runs) == sorted(f"w{w}-{c}" for w in (1, 2) for c in range(COMMITS))


def test_two_writers_and_a_reader_share_a_sqlite_lake(tmp_path):
    out = tmp_path / "out"
    report = _concurrently(out, "", tmp_path)  # the default catalog
    assert (out / catalogs.SQLITE_FILE).is_file()
    assert not (out / catalogs.POINTER).exists()  # the default needs no note
    _check(out, "", report)


@pytest.fixture(scope="module")
def pg_uri():
    if not postgres.available():
        pytest.fail("PostgreSQL is not installed: `make test` installs Debian's postgresql package")
    with postgres.cluster() as uri:
        yield uri


def test_two_writers_and_a_reader_share_a_postgres_lake(tmp_path, pg_uri):
    out = tmp_path / "out"
    report = _concurrently(out, pg_uri, tmp_path)
    _check(out, pg_uri, report)
    # The lake's folder remembers its catalog: commands given only --out find it.
    assert json.loads((out / catalogs.POINTER).read_text()) == {"catalog": pg_uri}
    with Lake.open(out, read_only=True) as lake:
        assert lake.catalog.kind == "postgres"
        assert lake.sql("SELECT count(*) FROM runs").column(0)[0].as_py() == 2 * COMMITS


def test_an_older_duckdb_file_lake_keeps_working(out, make):
    with Lake.open(out, catalog="duckdb") as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    with Lake.open(out) as lake:  # found by its file, not turned into a SQLite lake
        assert lake.catalog.kind == "duckdb"
        lake.commit(make.batch([make.trajectory(1)]), make.run_row("run-2"))
    assert not (out / catalogs.SQLITE_FILE).exists()
    with Lake.open(out, read_only=True) as lake:
        assert lake.sql("SELECT count(*) FROM trajectories").column(0)[0].as_py() == 2


def test_a_catalog_that_contradicts_the_lake_is_a_one_line_error(out, make):
    with Lake.open(out, catalog="duckdb") as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    with pytest.raises(LakeError, match="already uses the duckdb catalog.*trajforge migrate"):
        Lake.open(out, catalog="sqlite")
    with pytest.raises(LakeError, match="--catalog 'mysql://x': not a catalog; use sqlite"):
        Lake.open(out, catalog="mysql://x")


def test_a_password_in_the_uri_is_never_stored(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    found = catalogs.parse("postgresql://tf:s3cret@127.0.0.1:5/lake", out)
    catalogs.record(out, found)
    assert "s3cret" not in (out / catalogs.POINTER).read_text()
    assert catalogs.resolve(out).location == "postgresql://tf@127.0.0.1:5/lake"


def _migrate(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trajforge.cli", "migrate", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _old_lake(out: Path, make) -> None:
    with Lake.open(out, catalog="duckdb") as lake:
        lake.commit(make.batch([make.trajectory(i) for i in range(3)]), make.run_row("run-1"))
        lake.commit(make.batch([make.trajectory(i) for i in range(3, 5)]), make.run_row("run-2"))


def test_migrate_moves_an_older_lake_to_sqlite_with_its_snapshots(out, make):
    _old_lake(out, make)
    done = _migrate(out)
    assert done.returncode == 0, done.stderr
    assert "now uses the sqlite catalog" in done.stdout and "trajectories 5" in done.stdout
    assert (out / "catalog.ducklake.migrated").is_file()  # kept, not deleted
    with Lake.open(out) as lake:
        assert lake.catalog.kind == "sqlite"
        assert lake.runs().num_rows == 2
        lake.commit(make.batch([make.trajectory(9)]), make.run_row("run-3"))  # writes go on
    with Lake.open(out, read_only=True) as lake:
        first = min(s["snapshot_id"] for s in lake.snapshots() if s["commit_message"])
    with Lake.open(out, snapshot=first) as old:  # time travel survived the move
        assert old.sql("SELECT count(*) FROM trajectories").column(0)[0].as_py() == 3
    again = _migrate(out)
    assert again.returncode == 2 and again.stderr.startswith("error: nothing to migrate")


def test_migrate_moves_an_older_lake_to_postgres(out, make, pg_uri):
    import psycopg

    with psycopg.connect(pg_uri.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE migrated")
    target = pg_uri.rsplit("/", 1)[0] + "/migrated"
    _old_lake(out, make)
    done = _migrate(out, "--to", target)
    assert done.returncode == 0, done.stderr
    with Lake.open(out, read_only=True) as lake:  # found through the lake's note of its catalog
        assert lake.catalog.kind == "postgres"
        assert lake.sql("SELECT count(*) FROM trajectories").column(0)[0].as_py() == 5


def test_an_empty_postgres_database_is_no_lake_until_a_writer_makes_one(tmp_path, make, pg_uri):
    import psycopg

    with psycopg.connect(pg_uri.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE fresh")
    fresh = pg_uri.rsplit("/", 1)[0] + "/fresh"
    out = tmp_path / "elsewhere"  # another machine's folder: no note of the catalog
    assert not Lake.exists(out, fresh)
    with pytest.raises(LakeError, match="there is no lake"):
        Lake.open(out, read_only=True, catalog=fresh)
    with Lake.open(out, catalog=fresh) as lake:
        lake.commit(make.batch([make.trajectory(0)]), make.run_row())
    assert Lake.exists(tmp_path / "third", fresh)  # found on the server from any folder
