"""The contract's tables in a DuckLake catalog: creating them (and catching up lakes written
before a column was added), the `steps` view, and conforming incoming rows to the contract."""

from __future__ import annotations

import contextlib
from typing import Any

import duckdb
import pyarrow as pa

from trajforge.schemas.arrow import RUNS, TABLES, to_table
from trajforge.schemas.errors import LakeError
from trajforge.store.duck import duck_type, quote

STEPS_VIEW = """
CREATE {verb} lake.steps AS
SELECT trajectory_id, task_id, env, search, policy, run_id,
       s."index" AS step_index, s.observation, s.action, s.thought, s.reward, s.done, s.value,
       success, s.tool_name, s.tool_arguments, s.tool_result
FROM (SELECT *, UNNEST(steps) AS s FROM trajectories)
"""


def create_table_sql(name: str, schema: pa.Schema, key: str) -> str:
    columns = ", ".join(
        f"{quote(f.name)} {duck_type(f.type)}{' NOT NULL' if f.name == key else ''}" for f in schema
    )
    return f"CREATE TABLE IF NOT EXISTS lake.{quote(name)} ({columns})"


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """All tables of the contract and the `steps` view, in one snapshot (none if present)."""
    con.execute("BEGIN")
    try:
        for name, (schema, key) in TABLES.items():
            con.execute(create_table_sql(name, schema, key))
            _add_missing_columns(con, name, schema)
        con.execute(STEPS_VIEW.format(verb="VIEW IF NOT EXISTS"))
        view = con.execute(
            "SELECT sql FROM duckdb_views() WHERE database_name = 'lake' AND view_name = 'steps'"
        ).fetchone()
        if view and "tool_result" not in view[0]:  # a lake from before the tool columns
            con.execute(STEPS_VIEW.format(verb="OR REPLACE VIEW"))
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already ended the transaction
            con.execute("ROLLBACK")
        raise


def _add_missing_columns(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    # New columns are added to the contract freely; lakes written before then catch up.
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'lake' AND table_name = ?",
        [name],
    ).fetchall()
    present = {row[0] for row in rows}
    for f in schema:
        if f.name not in present:
            column = f"{quote(f.name)} {duck_type(f.type)}"
            con.execute(f"ALTER TABLE lake.{quote(name)} ADD COLUMN {column}")
        elif pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
            _add_missing_fields(con, name, f)


def _add_missing_fields(con: duckdb.DuckDBPyConnection, name: str, column: pa.Field) -> None:
    """New fields of a list of structs (a step's): without them an insert would drop their values."""
    query = f"SELECT {quote(column.name)} FROM lake.{quote(name)} LIMIT 0"
    have = con.execute(query).fetch_arrow_table().schema.field(column.name).type
    known = {f.name for f in have.value_type}
    for f in column.type.value_type:
        if f.name not in known:
            path = f"{quote(column.name)}.element.{quote(f.name)}"
            con.execute(f"ALTER TABLE lake.{quote(name)} ADD COLUMN {path} {duck_type(f.type)}")


def conform_all(tables: dict[str, pa.Table], run: dict[str, Any] | None) -> dict[str, pa.Table]:
    """Each incoming table cast to its contract schema, checked before anything is written."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise LakeError(f"unknown tables {unknown}; the lake has {sorted(TABLES)}")
    if "runs" in tables:
        raise LakeError("pass the run row as `run`, not as a table")
    batches = {name: conform(name, table) for name, table in tables.items()}
    if run is not None:
        batches["runs"] = conform("runs", to_table([run], RUNS))
    return batches


def conform(name: str, table: pa.Table) -> pa.Table:
    schema, key = TABLES[name]
    missing = [c for c in schema.names if c not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise LakeError(f"table {name}: missing columns {missing}, unknown columns {extra}")
    conformed = table.select(schema.names).cast(schema)
    if conformed.column(key).null_count:
        raise LakeError(f"table {name}: {conformed.column(key).null_count} rows have no {key}")
    return conformed
