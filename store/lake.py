"""The DuckLake catalog of a run's output: `{out}/catalog.ducklake`, Parquet under `{out}/lake/`.

One in-memory DuckDB connection per `Lake`, with the packaged ducklake extension loaded from disk
(nothing is ever downloaded). Writes go through `commit`, which adds only rows whose primary key
the lake does not hold yet, all tables in one transaction, so a retried or rerun bundle adds
nothing twice. Reads go through `sql`, which refuses anything but queries (checked on DuckDB's
parse tree); a read-only lake is also sandboxed: DuckDB may read files under `{out}/lake/` only.

The catalog is the truth: a file under `lake/` that the catalog does not list belongs to a commit
that never happened; a writer's open deletes such orphans once they are old enough.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa

from trajforge.schemas.arrow import RUNS, TABLES, to_table
from trajforge.schemas.errors import LakeError

CATALOG = "catalog.ducklake"
DATA_DIR = "lake"

_CONFIG = {
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
}

log = logging.getLogger(__name__)

# How long an open waits for another process's hold on the catalog: a writer (a run's commit)
# waits minutes, the command line's readers seconds (a writer needs DuckDB's file catalog to itself).
WRITER_LOCK_TIMEOUT_S = 300.0
READER_LOCK_TIMEOUT_S = 10.0
# Parquet under lake/ that the catalog does not list and older than this is an orphan of a crashed
# commit. The age keeps a file that a writer is still committing (a multi-writer catalog such as
# PostgreSQL, or a long transaction) out of reach: no commit takes an hour between write and commit.
ORPHAN_MIN_AGE_S = 3600.0

_SCALARS: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
}

STEPS_VIEW = """
CREATE {verb} lake.steps AS
SELECT trajectory_id, task_id, env, search, policy, run_id,
       s."index" AS step_index, s.observation, s.action, s.thought, s.reward, s.done, s.value,
       success, s.tool_name, s.tool_arguments, s.tool_result
FROM (SELECT *, UNNEST(steps) AS s FROM trajectories)
"""

_READ_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(analy[sz]e\s+|\([^)]*\)\s*)?", re.IGNORECASE)
# DuckLake's functions that change the lake or delete its files.
_MAINTENANCE = frozenset(
    {
        "add_data_files",
        "cleanup_old_files",
        "delete_orphaned_files",
        "expire_snapshots",
        "flush_inlined_data",
        "merge_adjacent_files",
        "rewrite_data_files",
        "set_commit_message",
        "set_option",
        "commit",
    }
)
# The table functions a read may call (others run SQL text unchecked, checkpoint, import, ...).
# File readers are listed: the sandbox confines them to the lake's folder.
_READ_TABLE_FUNCTIONS = frozenset(
    {
        # DuckLake's read functions, as lake.NAME() or ducklake_NAME('lake')
        "snapshots",
        "current_snapshot",
        "last_committed_snapshot",
        "table_info",
        "table_changes",
        "table_insertions",
        "table_deletions",
        "list_files",
        "options",
        "settings",
        # rows out of values
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        # catalog metadata
        "show",
        "show_databases",
        "show_tables",
        "show_tables_expanded",
        "summary",
        "pragma_table_info",
        "pragma_show",
        "pragma_version",
        "pragma_storage_info",
        "storage_info",
        "functions",
        "version",
        # files (sandboxed)
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "parquet_file_metadata",
        "parquet_kv_metadata",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_ndjson",
        "read_text",
        "read_blob",
        "glob",
    }
)


class ReadOnlyError(LakeError):
    """A statement that would change the lake, sent down the read-only path."""


class QueryTimeout(LakeError):
    """A query stopped at its timeout."""


class _Locked(Exception):
    """Another process holds the catalog's file lock."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@dataclass(frozen=True)
class CommitResult:
    snapshot_id: int | None
    added: dict[str, int] = field(default_factory=dict)


def extension_path() -> Path:
    """The ducklake extension shipped by the `duckdb-extension-ducklake` wheel for this duckdb."""
    version = duckdb.__version__
    fix = f"install it with: pip install duckdb-extension-ducklake=={version}"
    try:
        import duckdb_extension_ducklake
    except ImportError as exc:
        raise LakeError(f"the packaged ducklake extension is missing; {fix}") from exc
    root = Path(duckdb_extension_ducklake.__file__).parent
    path = root / "extensions" / f"v{version}" / "ducklake.duckdb_extension"
    if not path.is_file():
        raise LakeError(f"no ducklake extension for duckdb {version} at {path}; {fix}")
    return path


def duck_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type that round-trips `arrow_type`."""
    if pa.types.is_map(arrow_type):
        return f"MAP({duck_type(arrow_type.key_type)}, {duck_type(arrow_type.item_type)})"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"{duck_type(arrow_type.value_type)}[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f"{_quote(f.name)} {duck_type(f.type)}" for f in arrow_type)
        return f"STRUCT({fields})"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    try:
        return _SCALARS[arrow_type]
    except KeyError:
        raise TypeError(f"no DuckDB type for Arrow type {arrow_type}") from None


def create_table_sql(name: str, schema: pa.Schema, key: str) -> str:
    columns = ", ".join(
        f"{_quote(f.name)} {duck_type(f.type)}{' NOT NULL' if f.name == key else ''}" for f in schema
    )
    return f"CREATE TABLE IF NOT EXISTS lake.{_quote(name)} ({columns})"


def read_statements(query: str) -> list[str]:
    """The statements of `query`, or ReadOnlyError if any of them is not a read."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise LakeError(f"cannot parse the query: {_first_line(exc)}") from exc
    if not statements:
        raise LakeError("the query is empty")
    for statement in statements:
        _check_read(statement)
    return [s.query for s in statements]


def _check_read(statement: duckdb.Statement) -> None:
    kind = statement.type
    if kind not in _READ_TYPES:
        raise ReadOnlyError(
            f"trajforge sql is read-only: {kind.name} statements are refused; "
            "use SELECT, DESCRIBE, SHOW or EXPLAIN"
        )
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs the statement it explains: check that one too.
        for inner in duckdb.extract_statements(_EXPLAIN_PREFIX.sub("", statement.query, 1)):
            _check_read(inner)
        return
    for name, is_table in _functions(parse_select(statement.query)):
        base = name.lower().removeprefix("ducklake_")
        if base in _MAINTENANCE:
            raise ReadOnlyError(f"trajforge sql is read-only: {name}() changes the lake and is refused")
        if is_table and not (base in _READ_TABLE_FUNCTIONS or base.startswith("duckdb_")):
            raise ReadOnlyError(
                f"trajforge sql is read-only: the table function {name}() is refused; "
                "read the lake's tables and views, or lake.snapshots(), lake.table_info()"
            )


def parse_select(query: str) -> list[dict[str, Any]]:
    """DuckDB's parse tree of `query` (SELECT statements only) as JSON-like dicts."""
    con = duckdb.connect(":memory:", config=_CONFIG)
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    finally:
        con.close()
    if tree.get("error"):
        message = tree.get("error_message", "")
        if "Only SELECT" in message:
            raise ReadOnlyError(
                "trajforge sql is read-only: this statement cannot be checked as a plain SELECT "
                "(PIVOT, for one) and is refused"
            )
        raise LakeError(f"cannot parse the query: {message}")
    return tree["statements"]


def render_select(statement: dict[str, Any]) -> str:
    """SQL text that DuckDB renders back from a parse tree of `parse_select`."""
    tree = json.dumps({"error": False, "statements": [statement]})
    con = duckdb.connect(":memory:", config=_CONFIG)
    try:
        return str(con.execute("SELECT json_deserialize_sql(?::JSON)", [tree]).fetchone()[0])
    except duckdb.Error as exc:
        raise LakeError(f"cannot render the query: {_first_line(exc)}") from exc
    finally:
        con.close()


def _functions(node: Any) -> Iterator[tuple[str, bool]]:
    """(name, is a table function) of every function called anywhere in a parse tree."""
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            yield str(node["function"].get("function_name", "")), True
        elif "function_name" in node:
            yield str(node["function_name"]), False
        for value in node.values():
            yield from _functions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _functions(value)


class Lake:
    """An attached DuckLake catalog. Use `Lake.open(out)` as a context manager."""

    def __init__(self, con: duckdb.DuckDBPyConnection, out: Path, read_only: bool) -> None:
        self._con = con
        self.out = out
        self.read_only = read_only

    @staticmethod
    def exists(out: Path | str) -> bool:
        """Whether `out` holds a lake (opening it read-only would not fail for want of one)."""
        return (Path(out) / CATALOG).is_file()

    @classmethod
    def open(
        cls,
        out: Path | str,
        read_only: bool = False,
        snapshot: int | None = None,
        *,
        lock_timeout_s: float = WRITER_LOCK_TIMEOUT_S,
        memory_limit: str | None = None,
    ) -> Lake:
        """Attach `{out}/catalog.ducklake`; a lake read at an old `snapshot` is read-only.

        While another process holds the catalog, retry with backoff for `lock_timeout_s`, then
        fail naming the holder. A writer first deletes the orphans of crashed commits; a reader
        is sandboxed to the lake's folder, with `memory_limit` (default: half the machine's).
        """
        out = Path(out).resolve()
        read_only = read_only or snapshot is not None
        if read_only and not cls.exists(out):
            raise LakeError(f"there is no lake at {out}: run `trajforge run --out {out}` first")
        deadline = time.monotonic() + lock_timeout_s
        delay = 0.05
        while True:
            try:
                return cls._open_once(out, read_only, snapshot, memory_limit)
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
    def _open_once(cls, out: Path, read_only: bool, snapshot: int | None, memory_limit: str | None) -> Lake:
        path = extension_path()
        con = duckdb.connect(":memory:", config=_CONFIG)
        try:
            con.execute(f"LOAD {_literal(str(path))}")
            con.execute("SET TimeZone = 'UTC'")
            if not read_only:
                out.mkdir(parents=True, exist_ok=True)
            con.execute(_attach_sql(out, read_only, snapshot))
            con.execute("USE lake")
            lake = cls(con, out, read_only)
            if read_only:
                _sandbox(con, out, memory_limit)
            else:
                lake._create_tables()
                lake._delete_orphans()
        except duckdb.Error as exc:
            con.close()
            holder = _lock_holder(str(exc))
            if holder:
                raise _Locked(holder) from exc
            raise LakeError(_open_error(out, exc)) from exc
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

    def _create_tables(self) -> None:
        """All tables of the contract and the `steps` view, in one snapshot (none if present)."""
        self._con.execute("BEGIN")
        try:
            for name, (schema, key) in TABLES.items():
                self._con.execute(create_table_sql(name, schema, key))
                self._add_missing_columns(name, schema)
            self._con.execute(STEPS_VIEW.format(verb="VIEW IF NOT EXISTS"))
            view = self._con.execute(
                "SELECT sql FROM duckdb_views() WHERE database_name = 'lake' AND view_name = 'steps'"
            ).fetchone()
            if view and "tool_result" not in view[0]:  # a lake from before the tool columns
                self._con.execute(STEPS_VIEW.format(verb="OR REPLACE VIEW"))
            self._con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _delete_orphans(self) -> None:
        """Delete Parquet under lake/ that no snapshot of the catalog lists (a crashed commit)."""
        row = self._con.execute(
            "SELECT count(*) FROM ducklake_delete_orphaned_files("
            f"'lake', older_than => now() - INTERVAL {int(ORPHAN_MIN_AGE_S)} SECOND)"
        ).fetchone()
        if row and row[0]:
            log.warning("deleted %d orphaned files of crashed commits under %s", row[0], self.out / DATA_DIR)

    def _add_missing_columns(self, name: str, schema: pa.Schema) -> None:
        # New columns are added to the contract freely; lakes written before then catch up.
        rows = self._con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_catalog = 'lake' AND table_name = ?",
            [name],
        ).fetchall()
        present = {row[0] for row in rows}
        for f in schema:
            if f.name not in present:
                column = f"{_quote(f.name)} {duck_type(f.type)}"
                self._con.execute(f"ALTER TABLE lake.{_quote(name)} ADD COLUMN {column}")
            elif pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
                self._add_missing_fields(name, f)

    def _add_missing_fields(self, name: str, column: pa.Field) -> None:
        """New fields of a list of structs (a step's): without them an insert would drop their values."""
        query = f"SELECT {_quote(column.name)} FROM lake.{_quote(name)} LIMIT 0"
        have = self._con.execute(query).fetch_arrow_table().schema.field(column.name).type
        known = {f.name for f in have.value_type}
        for f in column.type.value_type:
            if f.name not in known:
                path = f"{_quote(column.name)}.element.{_quote(f.name)}"
                self._con.execute(f"ALTER TABLE lake.{_quote(name)} ADD COLUMN {path} {duck_type(f.type)}")

    def commit(self, tables: dict[str, pa.Table], run: dict[str, Any]) -> CommitResult:
        """Add the rows whose primary keys are new, plus the run row, as one snapshot.

        Within a batch the first row of each key wins. Nothing new: no snapshot, id None.
        Any failure rolls everything back and raises LakeError.
        """
        if self.read_only:
            raise LakeError(f"the lake at {self.out} is open read-only; it cannot commit")
        try:
            batches = _conform_all(tables, run)
        except (LakeError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
            raise LakeError(f"commit refused, the lake is unchanged: {exc}") from exc
        try:
            self._con.execute("BEGIN")
            added = {name: self._insert_new(name, batch) for name, batch in batches.items()}
            if not any(added.values()):
                self._rollback()
                return CommitResult(None, added)
            self._set_commit_message(run, added)
            self._con.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            raise LakeError(f"commit failed, the lake is unchanged: {_first_line(exc)}") from exc
        return CommitResult(self._last_committed_snapshot(), added)

    def _insert_new(self, name: str, batch: pa.Table) -> int:
        if batch.num_rows == 0:
            return 0
        table, key = f"lake.{_quote(name)}", _quote(TABLES[name][1])
        columns = ", ".join(_quote(c) for c in batch.column_names)
        incoming = batch.append_column("__order", pa.array(range(batch.num_rows), pa.int64()))
        self._con.register("__incoming", incoming)
        try:
            row = self._con.execute(
                f"INSERT INTO {table} ({columns}) "
                f"SELECT {columns} FROM __incoming AS i "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS e WHERE e.{key} = i.{key}) "
                f"QUALIFY row_number() OVER (PARTITION BY i.{key} ORDER BY i.__order) = 1"
            ).fetchone()
        finally:
            self._con.unregister("__incoming")
        return int(row[0]) if row else 0

    def _set_commit_message(self, run: dict[str, Any], added: dict[str, int]) -> None:
        run_id = run.get("run_id")
        extra = json.dumps({"run_id": run_id, "added": added})
        self._con.execute(
            "CALL lake.set_commit_message('trajforge', ?, extra_info => ?)",
            [f"run {run_id}", extra],
        )

    def _last_committed_snapshot(self) -> int | None:
        row = self._con.execute("FROM lake.last_committed_snapshot()").fetchone()
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
            raise LakeError(_outside_lake(self.out, exc)) from exc
        except duckdb.Error as exc:
            raise LakeError(_first_line(exc)) from exc
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
            raise LakeError(_first_line(exc)) from exc

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
        row = self._con.execute("FROM lake.current_snapshot()").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def snapshot_count(self) -> int:
        row = self._con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()
        return int(row[0]) if row else 0

    def runs(self) -> pa.Table:
        """The runs table, with each run's snapshot taken from the commit that added it."""
        return self._con.execute(
            "SELECT r.* REPLACE (coalesce(r.snapshot_id, s.snapshot_id) AS snapshot_id) "
            "FROM lake.runs AS r LEFT JOIN lake.snapshots() AS s ON s.commit_message = 'run ' || r.run_id "
            "ORDER BY r.started_at, r.run_id"
        ).fetch_arrow_table()

    def has_run(self, run_id: str) -> bool:
        row = self._con.execute("SELECT count(*) FROM lake.runs WHERE run_id = ?", [run_id]).fetchone()
        return bool(row and row[0])


def _conform_all(tables: dict[str, pa.Table], run: dict[str, Any]) -> dict[str, pa.Table]:
    """Each incoming table cast to its contract schema, checked before anything is written."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise LakeError(f"unknown tables {unknown}; the lake has {sorted(TABLES)}")
    if "runs" in tables:
        raise LakeError("pass the run row as `run`, not as a table")
    batches = {name: _conform(name, table) for name, table in tables.items()}
    batches["runs"] = _conform("runs", to_table([run], RUNS))
    return batches


def _conform(name: str, table: pa.Table) -> pa.Table:
    schema, key = TABLES[name]
    missing = [c for c in schema.names if c not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise LakeError(f"table {name}: missing columns {missing}, unknown columns {extra}")
    conformed = table.select(schema.names).cast(schema)
    if conformed.column(key).null_count:
        raise LakeError(f"table {name}: {conformed.column(key).null_count} rows have no {key}")
    return conformed


def _open_error(out: Path, exc: duckdb.Error) -> str:
    text = str(exc)
    if "already attached" in text:
        return f"the lake at {out} is already open in this process: close it or reuse that Lake"
    return f"cannot open the lake at {out}: {text.splitlines()[0]}"


def _outside_lake(out: Path, exc: duckdb.Error) -> str:
    match = re.search(r'Cannot access \w+ "([^"]*)"', str(exc))
    what = match.group(1) if match else "that file"
    return f"{what} is outside the lake: a query reads only the lake's files under {out / DATA_DIR}"


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


def _sandbox(con: duckdb.DuckDBPyConnection, out: Path, memory_limit: str | None) -> None:
    """Confine a reader to the lake's data files, bound its memory, and lock that in."""
    if memory_limit is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_limit = f"{total // 2 // 2**20}MiB"
    con.execute(f"SET memory_limit = {_literal(memory_limit)}")
    con.execute("SET enable_progress_bar = false")  # it draws on stdout, between csv rows
    con.execute(f"SET allowed_directories = [{_literal(str(out / DATA_DIR) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _attach_sql(out: Path, read_only: bool, snapshot: int | None) -> str:
    # DuckLake stores the data path as an absolute path; overriding it with the one next to
    # the catalog keeps an output directory usable after it is moved or copied.
    options = [
        f"DATA_PATH {_literal(str(out / DATA_DIR) + '/')}",
        "OVERRIDE_DATA_PATH true",
        # Every row lands in Parquet (the contract), never inlined into the catalog.
        "DATA_INLINING_ROW_LIMIT 0",
    ]
    if read_only:
        options.append("READ_ONLY")
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    target = _literal(f"ducklake:{out / CATALOG}")
    return f"ATTACH {target} AS lake ({', '.join(options)})"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
