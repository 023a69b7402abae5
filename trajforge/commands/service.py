"""Commands for operating trajforge as a service: `migrate`, `report`. Heavy imports stay inside
the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def migrate(
    out: Annotated[Path, typer.Option("--out", help="folder of the lake")] = Path("trajforge-data"),
    to: Annotated[
        str,
        typer.Option("--to", help="the new catalog: sqlite (the default) or postgres://USER@HOST:PORT/DB"),
    ] = "sqlite",
) -> None:
    """Move a lake made before SQLite catalogs (one DuckDB file, one process at a time) to SQLite or
    PostgreSQL, where readers read while a run commits. Snapshots and data files stay."""
    from trajforge.schemas.errors import LakeError
    from trajforge.store.migrate import migrate as move

    try:
        done = move(out, to)
    except LakeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rows = ", ".join(f"{name} {n}" for name, n in sorted(done.rows.items()) if n)
    typer.echo(f"the lake at {out} now uses the {done.catalog.describe()} ({rows or 'no rows'})")
    typer.echo(f"the old catalog is kept as {done.kept}")


def report(
    dest: Annotated[Path, typer.Option("--dest", help="folder to write report.html into")],
    run: Annotated[str | None, typer.Option("--run", help="one run's id (default: every run)")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder of the lake")] = Path("trajforge-data"),
    catalog: Annotated[str | None, typer.Option("--catalog", help="the lake's catalog")] = None,
) -> None:
    """Write one self-contained HTML report with plots (viewable offline) of a run or the lake."""
    from trajforge.report import write_report
    from trajforge.schemas.errors import LakeError

    try:
        path = write_report(out, dest, run, catalog)
    except LakeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")
