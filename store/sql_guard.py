"""The read-only path for user SQL: which statements and functions a read may run, checked on
DuckDB's parse tree, and the sandbox that confines a reader's connection to the lake's files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from trajforge.schemas.errors import LakeError
from trajforge.store.duck import connect, first_line, literal

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


def read_statements(query: str) -> list[str]:
    """The statements of `query`, or ReadOnlyError if any of them is not a read."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise LakeError(f"cannot parse the query: {first_line(exc)}") from exc
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
    con = connect()
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
    con = connect()
    try:
        return str(con.execute("SELECT json_deserialize_sql(?::JSON)", [tree]).fetchone()[0])
    except duckdb.Error as exc:
        raise LakeError(f"cannot render the query: {first_line(exc)}") from exc
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


def sandbox(
    con: duckdb.DuckDBPyConnection,
    data_dir: Path,
    memory_limit: str | None,
    threads: int | None = None,
    spill_dir: Path | None = None,
) -> None:
    """Confine a reader to the files under `data_dir`, bound its memory, and lock that in."""
    if memory_limit is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_limit = f"{total // 2 // 2**20}MiB"
    con.execute(f"SET memory_limit = {literal(memory_limit)}")
    if spill_dir is not None:
        con.execute(f"SET temp_directory = {literal(str(spill_dir))}")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET enable_progress_bar = false")  # it draws on stdout, between csv rows
    con.execute(f"SET allowed_directories = [{literal(str(data_dir) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def outside_sandbox(data_dir: Path, exc: duckdb.Error) -> str:
    """The error text for a read the sandbox refused: which file, and where reads may go."""
    match = re.search(r'Cannot access \w+ "([^"]*)"', str(exc))
    what = match.group(1) if match else "that file"
    return f"{what} is outside the lake: a query reads only the lake's files under {data_dir}"
