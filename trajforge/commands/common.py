"""What the commands share: the lake's options, the one-line error, opening the lake read-only and
printing a table as a table, CSV or JSON. Heavy libraries are imported inside the functions."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

OutOpt = Annotated[Path, typer.Option("--out", help="folder of the lake and run records")]
CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="the lake's catalog: sqlite (the default), postgres://USER@HOST:PORT/DB, duckdb (older lakes)",
    ),
]
DEFAULT_OUT = Path("trajforge-data")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def open_lake(out: Path, snapshot: int | None = None, catalog: str | None = None, **limits: Any) -> Any:
    """The lake read-only; `limits`: Lake.open's memory_limit, threads, spill_dir."""
    from trajforge.store.lake import READER_LOCK_TIMEOUT_S, Lake, LakeError

    try:
        return Lake.open(
            out,
            read_only=True,
            snapshot=snapshot,
            lock_timeout_s=READER_LOCK_TIMEOUT_S,
            catalog=catalog,
            **limits,
        )
    except LakeError as exc:
        raise fail(str(exc)) from None


def _json_value(value: Any) -> Any:
    """DuckDB's sums are DECIMAL/HUGEINT: keep them numbers in JSON."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _flat(table: Any) -> Any:
    """CSV has no nested values: lists, structs and maps (e.g. `runs.counts`) become JSON text."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            column = table.column(i).to_pylist()
            if pa.types.is_map(field.type):  # Arrow gives a MAP as (key, value) pairs
                column = [None if v is None else dict(v) for v in column]
            text = [None if v is None else json.dumps(v, default=_json_value) for v in column]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def emit(table: Any, fmt: Format) -> None:
    if fmt is Format.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(_flat(table), sys.stdout.buffer)
    elif fmt is Format.json:
        typer.echo(json.dumps(table.to_pylist(), default=_json_value, indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        view = Table(show_lines=False)
        for name in table.column_names:
            view.add_column(name, overflow="fold")
        for row in table.to_pylist():
            view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        Console().print(view)
        typer.echo(f"({table.num_rows} rows)", err=True)
