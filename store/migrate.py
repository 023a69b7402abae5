"""Move a lake from the DuckDB-file catalog of older lakes (one process at a time) to SQLite or
PostgreSQL, keeping its snapshots (time travel), its runs and its data files where they are.

A DuckLake catalog is a set of plain metadata tables: the new catalog is made by DuckLake itself
(its schema, for this version), then its tables are filled with the old catalog's rows, in one
transaction. The row count of every table of the lake is compared before the switch; the old
catalog file is kept, renamed `catalog.ducklake.migrated` (nothing is deleted).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from trajforge.schemas.arrow import TABLES
from trajforge.schemas.errors import LakeError
from trajforge.store import catalogs
from trajforge.store.catalogs import Catalog
from trajforge.store.lake import DATA_DIR, extension_path

_CONFIG = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
MIGRATED = catalogs.DUCKDB_FILE + ".migrated"


@dataclass(frozen=True)
class Migrated:
    catalog: Catalog
    rows: dict[str, int]
    kept: Path  # the old catalog, renamed


def migrate(out: Path, to: str = "sqlite") -> Migrated:
    out = out.resolve()
    source = catalogs.resolve(out)
    if source.kind != "duckdb":
        raise LakeError(f"nothing to migrate: the lake at {out} already uses the {source.describe()}")
    target = catalogs.parse(to, out)
    if target.kind == "duckdb":
        raise LakeError(f"--to {to}: migrate to sqlite (the default) or postgres://USER@HOST:PORT/DB")
    work = Catalog("sqlite", target.location + ".tmp") if target.kind == "sqlite" else target
    if work.kind == "sqlite":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(work.location)  # a migration that stopped half-way
    # The old catalog admits one process: holding it keeps writers out while the rows move.
    con = duckdb.connect(":memory:", config=_CONFIG)
    try:
        for path in (extension_path(), *work.extensions()):
            con.execute(f"LOAD '{path}'")
        rows = _copy(con, source, work, out)
    except duckdb.Error as exc:
        raise LakeError(f"migrate failed, the lake is unchanged: {catalogs.redact(str(exc))}") from exc
    finally:
        con.close()
    if work is not target:
        os.replace(work.location, target.location)
    catalogs.record(out, target)
    kept = out / MIGRATED
    os.replace(source.location, kept)  # from now on the lake opens on its new catalog
    return Migrated(target, rows, kept)


def _copy(con: duckdb.DuckDBPyConnection, source: Catalog, work: Catalog, out: Path) -> dict[str, int]:
    data = str(out / DATA_DIR) + "/"
    con.execute(f"ATTACH '{source.location}' AS src (READ_ONLY)")
    con.execute(f"ATTACH '{work.attach_target()}' AS fresh (DATA_PATH '{data}')")  # DuckLake's schema
    fresh = _tables(con, "fresh")
    if fresh:
        raise LakeError(
            f"the {work.describe()} already holds a lake ({len(fresh)} tables): migrate into an empty one"
        )
    con.execute("DETACH fresh")
    kind = "sqlite" if work.kind == "sqlite" else "postgres"
    con.execute(f"ATTACH '{work.location}' AS dst (TYPE {kind})")
    metadata = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src' ORDER BY table_name"
        ).fetchall()
    ]
    con.execute("BEGIN")
    for name in metadata:
        con.execute(f'DELETE FROM dst."{name}"')
        con.execute(f'INSERT INTO dst."{name}" BY NAME SELECT * FROM src."{name}"')
    con.execute("COMMIT")
    con.execute("DETACH dst")
    con.execute("DETACH src")
    con.execute(f"ATTACH 'ducklake:{source.location}' AS old (READ_ONLY, DATA_PATH '{data}')")
    con.execute(f"ATTACH '{work.attach_target()}' AS new (READ_ONLY, DATA_PATH '{data}')")
    rows: dict[str, int] = {}
    for name in _tables(con, "old"):
        before = con.execute(f'SELECT count(*) FROM old."{name}"').fetchall()[0][0]
        after = con.execute(f'SELECT count(*) FROM new."{name}"').fetchall()[0][0]
        if before != after:
            raise LakeError(
                f"migrate failed: table {name} has {after} rows, not {before}; the lake is unchanged"
            )
        rows[name] = int(after)
    return rows


def _tables(con: duckdb.DuckDBPyConnection, database: str) -> list[str]:
    names = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [database]
    ).fetchall()
    return [n[0] for n in names if n[0] in TABLES or not n[0].startswith("ducklake_")]
