"""The DuckLake lake of a run's output: a catalog (store.catalogs: SQLite by default, PostgreSQL,
or the DuckDB file of older lakes), Parquet under `{out}/lake/`.

One in-memory DuckDB connection per `Lake`, with the packaged ducklake extension loaded from disk
(nothing is ever downloaded). Writes go through `commit`, which adds only rows whose primary key
the lake does not hold yet, all tables in one transaction, so a retried or rerun bundle adds
nothing twice. Reads go through `sql`, which refuses anything but queries (checked on DuckDB's
parse tree, sql_guard.py); a read-only lake is also sandboxed: DuckDB may read files under `{out}/lake/` only.

The catalog is the truth: a file under `lake/` that the catalog does not list belongs to a commit
that never happened; a writer's open deletes such orphans once they are old enough.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa

from trajforge.schemas.arrow import TABLES
from trajforge.schemas.errors import LakeError
from trajforge.store import catalogs
from trajforge.store.catalogs import Catalog
from trajforge.store.duck import connect, extension_path, first_line, literal, quote
from trajforge.store.duck import duck_type as duck_type  # its old import path
from trajforge.store.sql_guard import ReadOnlyError as ReadOnlyError  # its old import path
from trajforge.store.sql_guard import outside_sandbox, read_statements, sandbox
from trajforge.store.tables import STEPS_VIEW as STEPS_VIEW  # its old import path
from trajforge.store.tables import conform_all, create_tables

DATA_DIR = "lake"

log = logging.getLogger(__name__)

# How long an open waits for another process's hold on the catalog: a writer (a run's commit)
# waits minutes, the command line's readers seconds (a writer needs DuckDB's file catalog to itself).
WRITER_LOCK_TIMEOUT_S = 300.0
READER_LOCK_TIMEOUT_S = 10.0
# Parquet under lake/ that the catalog does not list and older than this is an orphan of a crashed
# commit. The age keeps a file that a writer is still committing (a multi-writer catalog such as
# PostgreSQL, or a long transaction) out of reach: no commit takes an hour between write and commit.
ORPHAN_MIN_AGE_S = 3600.0


class QueryTimeout(LakeError):
    """A query stopped at its timeout."""


class _Locked(Exception):
    """Another process holds the catalog's file lock."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class _Lost(Exception):
    """A commit that lost a race with another writer (SQLite's lock, DuckLake's conflict check)."""


@dataclass(frozen=True)
class CommitResult:
    snapshot_id: int | None
    added: dict[str, int] = field(default_factory=dict)


class Lake:
    """An attached DuckLake catalog. Use `Lake.open(out)` as a context manager."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        out: Path,
        read_only: bool,
        catalog: Catalog,
        lock_timeout_s: float = WRITER_LOCK_TIMEOUT_S,
    ) -> None:
        self._con = con
        self.out = out
        self.read_only = read_only
        self.catalog = catalog
        self._lock_timeout_s = lock_timeout_s

    @staticmethod
    def exists(out: Path | str, catalog: str | None = None) -> bool:
        """Whether `out` holds a lake (opening it read-only would not fail for want of one)."""
        out = Path(out).resolve()
        return catalogs.resolve(out, catalog).exists()

    @classmethod
    def open(
        cls,
        out: Path | str,
        read_only: bool = False,
        snapshot: int | None = None,
        *,
        lock_timeout_s: float = WRITER_LOCK_TIMEOUT_S,
        memory_limit: str | None = None,
        threads: int | None = None,
        spill_dir: Path | None = None,
        catalog: str | None = None,
    ) -> Lake:
        """Attach the lake's catalog (`catalog`: a `--catalog` value; default: the lake's own, see
        store.catalogs); a lake read at an old `snapshot` is read-only.

        While another process holds the catalog, retry with backoff for `lock_timeout_s`, then
        fail naming the holder. A writer first deletes the orphans of crashed commits; a reader
        is sandboxed to the lake's folder, with `memory_limit` (default: half the machine's) and
        `threads` (default: DuckDB's, one per core) and `spill_dir` (default: DuckDB's, `.tmp` in
        the working folder), where DuckDB spills beyond its limit (it creates and removes it).
        """
        out = Path(out).resolve()
        read_only = read_only or snapshot is not None
        if read_only and not cls.exists(out, catalog):
            raise LakeError(f"there is no lake at {out}: run `trajforge run --out {out}` first")
        found = catalogs.resolve(out, catalog)
        deadline = time.monotonic() + lock_timeout_s
        delay = 0.05
        while True:
            try:
                return cls._open_once(
                    out, found, read_only, snapshot, (memory_limit, threads, spill_dir), lock_timeout_s
                )
            except _Locked as locked:
                if time.monotonic() + delay > deadline:
                    raise LakeError(
                        f"the lake at {out} is in use by {locked.holder}; waited {lock_timeout_s:g} s: "
                        "retry when it has finished"
                    ) from None
                if delay == 0.05:
                    log.warning(
                        "the lake at %s is in use by %s; waiting up to %g s",
                        out,
                        locked.holder,
                        lock_timeout_s,
                    )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    @classmethod
    def _open_once(
        cls,
        out: Path,
        catalog: Catalog,
        read_only: bool,
        snapshot: int | None,
        limits: tuple[str | None, int | None, Path | None],
        lock_timeout_s: float,
    ) -> Lake:
        con = connect()
        try:
            con.execute("SET enable_progress_bar = false")  # it draws on stdout, a slow attach too
            for path in (extension_path(), *catalog.extensions()):
                con.execute(f"LOAD {literal(str(path))}")
            con.execute("SET TimeZone = 'UTC'")
            if not read_only:
                out.mkdir(parents=True, exist_ok=True)
                catalogs.record(out, catalog)
            with catalog.writer_turn(lock_timeout_s) if not read_only else contextlib.nullcontext():
                con.execute(_attach_sql(out, catalog, read_only, snapshot))
                con.execute("USE lake")
                lake = cls(con, out, read_only, catalog, lock_timeout_s)
                if not read_only:
                    create_tables(con)
                    lake._delete_orphans()
            if read_only:
                sandbox(con, out / DATA_DIR, *limits)
        except duckdb.Error as exc:
            con.close()
            holder = _lock_holder(str(exc)) or ("another writer" if catalogs.transient(exc) else None)
            if holder:
                raise _Locked(holder) from exc
            raise LakeError(_open_error(out, catalog, exc)) from exc
        except BaseException:
            con.close()
            raise
        return lake

    def __enter__(self) -> Lake:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    def _delete_orphans(self) -> None:
        """Delete Parquet under lake/ that no snapshot of the catalog lists (a crashed commit)."""
        # Drained with fetchall: a result left half-read keeps its transaction, and with it a
        # SQLite catalog's read lock, open until the next query (other writers then wait).
        (row,) = self._con.execute(
            "SELECT count(*) FROM ducklake_delete_orphaned_files("
            f"'lake', older_than => now() - INTERVAL {int(ORPHAN_MIN_AGE_S)} SECOND)"
        ).fetchall()
        if row and row[0]:
            log.warning("deleted %d orphaned files of crashed commits under %s", row[0], self.out / DATA_DIR)

    def commit(
        self, tables: dict[str, pa.Table], run: dict[str, Any], *, step: dict[str, Any] | None = None
    ) -> CommitResult:
        """Add the rows whose primary keys are new, plus the run row, as one snapshot.

        Within a batch the first row of each key wins. Nothing new: no snapshot, id None.
        Any failure rolls everything back and raises LakeError. A run that commits as it goes
        passes `step` ({"step": K, ...}, kept in the snapshot's note, see `steps_of`) with a
        run dict holding only its run_id: the run row comes with its last commit.
        """
        if self.read_only:
            raise LakeError(f"the lake at {self.out} is open read-only; it cannot commit")
        try:
            batches = conform_all(tables, run if step is None else None)
        except (LakeError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
            raise LakeError(f"commit refused, the lake is unchanged: {exc}") from exc
        deadline = time.monotonic() + self._lock_timeout_s
        delay = 0.05
        while True:
            try:
                with self.catalog.writer_turn(self._lock_timeout_s):
                    return self._commit_once(batches, run, step)
            except _Lost as lost:  # another writer's commit crossed ours: none of ours landed
                if time.monotonic() + delay > deadline:
                    raise LakeError(f"commit failed, the lake is unchanged: {lost}") from None
                log.info("commit lost a race with another writer (%s); retrying", lost)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _commit_once(
        self, batches: dict[str, pa.Table], run: dict[str, Any], step: dict[str, Any] | None
    ) -> CommitResult:
        try:
            self._con.execute("BEGIN")
            added = {name: self._insert_new(name, batch) for name, batch in batches.items()}
            if not any(added.values()) and step is None:  # a step commits even if empty: it is its mark
                self._rollback()
                return CommitResult(None, added)
            self._set_commit_message(run, added, step)
            self._con.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            if catalogs.transient(exc):
                raise _Lost(first_line(exc)) from exc
            raise LakeError(f"commit failed, the lake is unchanged: {first_line(exc)}") from exc
        return CommitResult(self._last_committed_snapshot(), added)

    def _insert_new(self, name: str, batch: pa.Table) -> int:
        if batch.num_rows == 0:
            return 0
        table, key = f"lake.{quote(name)}", quote(TABLES[name][1])
        columns = ", ".join(quote(c) for c in batch.column_names)
        incoming = batch.append_column("__order", pa.array(range(batch.num_rows), pa.int64()))
        self._con.register("__incoming", incoming)
        try:
            (row,) = self._con.execute(
                f"INSERT INTO {table} ({columns}) "
                f"SELECT {columns} FROM __incoming AS i "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS e WHERE e.{key} = i.{key}) "
                f"QUALIFY row_number() OVER (PARTITION BY i.{key} ORDER BY i.__order) = 1"
            ).fetchall()
        finally:
            self._con.unregister("__incoming")
        return int(row[0]) if row else 0

    def _set_commit_message(
        self, run: dict[str, Any], added: dict[str, int], step: dict[str, Any] | None = None
    ) -> None:
        run_id = run.get("run_id")
        message = f"run {run_id}" if step is None else f"run {run_id} step {step['step']}"
        extra = json.dumps({"run_id": run_id, "added": added, **(step or {})}, default=str)
        self._con.execute(
            "CALL lake.set_commit_message('trajforge', ?, extra_info => ?)",
            [message, extra],
        )

    def steps_of(self, run_id: str) -> list[dict[str, Any]]:
        """The notes of the step commits of a run that commits as it goes, in commit order."""
        rows = self._con.execute(
            "SELECT commit_extra_info FROM lake.snapshots() WHERE commit_message LIKE ? ORDER BY snapshot_id",
            [f"run {run_id} step %"],
        ).fetchall()
        return [json.loads(r[0]) for r in rows if r[0]]

    def _last_committed_snapshot(self) -> int | None:
        (row,) = self._con.execute("FROM lake.last_committed_snapshot()").fetchall()
        return None if row is None or row[0] is None else int(row[0])

    def _rollback(self) -> None:
        # A failed COMMIT has already ended the transaction: nothing left to roll back.
        with contextlib.suppress(duckdb.Error):
            self._con.execute("ROLLBACK")

    def sql(self, query: str, timeout_s: float | None = None) -> pa.Table:
        """Run a read-only query (tables resolve in the lake); the last statement's rows.

        DuckDB has no statement timeout: a timer interrupts the connection after `timeout_s`.
        """
        statements = read_statements(query)
        timer = threading.Timer(timeout_s, self._con.interrupt) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            result = pa.table({})
            for statement in statements:
                result = self._con.execute(statement).fetch_arrow_table()
            return result
        except duckdb.InterruptException as exc:
            raise QueryTimeout(f"the query was stopped after {timeout_s:g} s (its timeout)") from exc
        except duckdb.PermissionException as exc:
            raise LakeError(outside_sandbox(self.out / DATA_DIR, exc)) from exc
        except duckdb.Error as exc:
            raise LakeError(first_line(exc)) from exc
        finally:
            if timer:
                timer.cancel()

    def batches(self, query: str, rows_per_batch: int = 10_000) -> pa.RecordBatchReader:
        """Stream a read-only query; read the reader to the end before the next query."""
        statements = read_statements(query)
        if len(statements) != 1:
            raise LakeError("stream one statement at a time")
        try:
            return self._con.execute(statements[0]).fetch_record_batch(rows_per_batch)
        except duckdb.Error as exc:
            raise LakeError(first_line(exc)) from exc

    def snapshots(self) -> list[dict[str, Any]]:
        table = self._con.execute(
            "SELECT snapshot_id, snapshot_time, changes, commit_message "
            "FROM lake.snapshots() ORDER BY snapshot_id"
        ).fetch_arrow_table()
        rows = table.to_pylist()
        for row in rows:
            row["changes"] = dict(row["changes"] or [])  # Arrow gives a MAP as (key, value) pairs
        return rows

    def snapshot_id(self) -> int | None:
        """The snapshot this lake reads (the latest, or the one it was opened at)."""
        (row,) = self._con.execute("FROM lake.current_snapshot()").fetchall()
        return None if row is None or row[0] is None else int(row[0])

    def snapshot_count(self) -> int:
        (row,) = self._con.execute("SELECT count(*) FROM lake.snapshots()").fetchall()
        return int(row[0]) if row else 0

    def runs(self) -> pa.Table:
        """The runs table, with each run's snapshot taken from the commit that added it."""
        return self._con.execute(
            "SELECT r.* REPLACE (coalesce(r.snapshot_id, s.snapshot_id) AS snapshot_id) "
            "FROM lake.runs AS r LEFT JOIN lake.snapshots() AS s ON s.commit_message = 'run ' || r.run_id "
            "ORDER BY r.started_at, r.run_id"
        ).fetch_arrow_table()

    def has_run(self, run_id: str) -> bool:
        (row,) = self._con.execute("SELECT count(*) FROM lake.runs WHERE run_id = ?", [run_id]).fetchall()
        return bool(row and row[0])


def _open_error(out: Path, catalog: Catalog, exc: duckdb.Error) -> str:
    text = str(exc)
    if "already attached" in text:
        return f"the lake at {out} is already open in this process: close it or reuse that Lake"
    return f"cannot open the lake at {out} ({catalog.describe()}): {catalogs.redact(text.splitlines()[0])}"


def _lock_holder(text: str) -> str | None:
    """Who holds the catalog, from DuckDB's lock error ("... held in EXE (PID 123)"), else None."""
    if "Could not set lock" not in text:
        return None
    # A DuckDB-file catalog admits one writer, and no reader while it writes.
    match = re.search(r"held in (.*?) \(PID (\d+)\)", text)
    if not match:
        return "another process"
    pid = int(match.group(2))
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        command = " ".join(argv.decode(errors="replace").split())  # one line
    except OSError:
        command = match.group(1)
    if len(command) > 100:
        command = command[:97] + "..."
    return f"PID {pid} ({command})"


def _attach_sql(out: Path, catalog: Catalog, read_only: bool, snapshot: int | None) -> str:
    # DuckLake stores the data path as an absolute path; overriding it with the one next to
    # the catalog keeps an output directory usable after it is moved or copied.
    options = [
        f"DATA_PATH {literal(str(out / DATA_DIR) + '/')}",
        "OVERRIDE_DATA_PATH true",
        # Every row lands in Parquet (the contract), never inlined into the catalog.
        "DATA_INLINING_ROW_LIMIT 0",
    ]
    if read_only:
        options.append("READ_ONLY")
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    target = literal(catalog.attach_target())
    return f"ATTACH {target} AS lake ({', '.join(options)})"
