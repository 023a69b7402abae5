"""`trajforge sql` and `trajforge runs`: read the lake (and the run folders beside it)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from trajforge.commands.common import DEFAULT_OUT, CatalogOpt, Format, OutOpt, emit, fail, open_lake


def sql(
    query: Annotated[
        str, typer.Argument(help="a read-only SQL query; tables: runs, tasks, trajectories, steps, ...")
    ],
    out: OutOpt = DEFAULT_OUT,
    format: Annotated[Format, typer.Option("--format", help="table, csv or json")] = Format.table,
    snapshot: Annotated[int | None, typer.Option(help="read the lake as of this snapshot")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="stop the query after this many seconds (0: never)")
    ] = 120.0,
    catalog: CatalogOpt = None,
) -> None:
    """Query the lake with DuckDB SQL (read-only; files outside the lake are out of reach)."""
    from trajforge.store.lake import LakeError, QueryTimeout

    if timeout < 0:
        raise fail(f"--timeout {timeout:g}: use 0 (no limit) or a number of seconds")
    with open_lake(out, snapshot, catalog) as lake:
        try:
            result = lake.sql(query, timeout_s=timeout or None)
        except QueryTimeout as exc:
            raise fail(f"{exc}; narrow the query (WHERE, LIMIT) or pass --timeout SECONDS") from None
        except LakeError as exc:
            raise fail(str(exc)) from None
    emit(result, format)


def runs(
    out: OutOpt = DEFAULT_OUT,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
    catalog: CatalogOpt = None,
) -> None:
    """List runs: those in the lake and those that stopped before committing."""
    import pyarrow as pa

    from trajforge.flows.staging import list_run_dirs
    from trajforge.store.lake import Lake, LakeError

    rows: list[dict[str, Any]] = []
    committed: set[str] = set()
    try:
        found = Lake.exists(out, catalog)
    except LakeError as exc:
        raise fail(str(exc)) from None
    if found:
        with open_lake(out, catalog=catalog) as lake:
            for r in lake.runs().to_pylist():
                committed.add(r["run_id"])
                rows.append(
                    _run_row(
                        r["run_id"], r["status"], r["started_at"], dict(r["counts"] or []), r["snapshot_id"]
                    )
                )
    for run_dir in list_run_dirs(out):
        m = run_dir.manifest()
        if run_dir.run_id not in committed:
            rows.append(
                _run_row(
                    run_dir.run_id, m.get("status", "?"), m.get("started_at"), {}, None, m.get("summary", "")
                )
            )
        log = m.get("attempt_log", [])
        for i, attempt in enumerate(log):  # attempts that were killed or crashed, beside the run
            if attempt.get("ended", "stopped") == "stopped" and i < len(log) - 1:
                note = f"attempt {i + 1} of {len(log)}: killed or crashed; a later attempt resumed it"
                rows.append(_run_row(run_dir.run_id, "stopped", attempt["started_at"], {}, None, note))
    if not rows:
        raise fail(f"no runs under {out}; start one with `trajforge run --out {out}`")
    emit(pa.Table.from_pylist(rows), format)


def _run_row(run_id: str, status: str, started: Any, counts: dict, snapshot: Any, note: str = "") -> dict:
    kept = {k: v for k, v in counts.items() if k in ("tasks", "trajectories", "successes")}
    dropped = {k: v for k, v in counts.items() if k.startswith(("failed:", "dropped:"))}
    return {
        "run_id": run_id,
        "status": status,
        "started_at": str(started or ""),
        "kept": json.dumps(kept),
        "dropped": json.dumps(dropped),
        "snapshot": snapshot,
        "note": note,
    }
