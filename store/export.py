"""Training shards out of the lake, laid out like a Hugging Face dataset repository."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.schemas.conversation import messages
from trajforge.store.lake import Lake, LakeError
from trajforge.store.sql_guard import ReadOnlyError, parse_select, render_select

# Every export carries this file; --overwrite replaces only a folder that has it.
MARKER = ".trajforge-export.json"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SFT = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("total_reward", pa.float64()),
    ]
)


class ExportError(LakeError):
    """An export that cannot start; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    rows: int
    shards: list[Path]


def sft_query(where: str | None = None) -> str:
    # The filter picks rows inside its own subquery: it cannot undo `success` or the order.
    source = f"({filtered('trajectories', where)}) AS filtered" if where else "trajectories"
    return (
        "SELECT trajectory_id, task_id, env, instruction, steps, total_reward "
        f"FROM {source} WHERE success ORDER BY trajectory_id"
    )


def filtered(table: str, where: str) -> str:
    """`SELECT * FROM table WHERE ...` as DuckDB renders it back from the parsed filter.

    The filter must be exactly one boolean expression over the table's rows: no set operation,
    subquery, ORDER BY or LIMIT, and its parse tree must survive the round trip through SQL text.
    """
    fix = f"--where {where!r}: use one condition on the {table} columns, e.g. --where \"env = 'textworld'\""
    one = "a filter has no UNION, ORDER BY, LIMIT or second statement"
    try:
        statements = parse_select(f"SELECT * FROM {table} WHERE {where}")
    except ReadOnlyError:
        raise ExportError(f"{fix} ({one})") from None
    except LakeError as exc:
        raise ExportError(f"{fix} ({exc})") from None
    reference = parse_select(f"SELECT * FROM {table} WHERE true")[0]
    if len(statements) != 1 or _without(statements[0], "where_clause") != _without(reference, "where_clause"):
        raise ExportError(f"{fix} ({one})")
    condition = statements[0]["node"]["where_clause"]
    if _holds_query(condition):
        raise ExportError(f"{fix} (a filter reads no other table: subqueries are refused)")
    sql = render_select(statements[0])
    if _without(parse_select(sql)[0]) != _without(statements[0]):
        raise ExportError(f"{fix} (DuckDB cannot render this filter back to the same SQL)")
    return sql


def _without(node: Any, where: str | None = None) -> Any:
    """A parse tree without source positions (and without the top node's `where`)."""
    if isinstance(node, dict):
        if where and "node" in node:
            return {**node, "node": _without({k: v for k, v in node["node"].items() if k != where})}
        return {k: _without(v) for k, v in node.items() if k != "query_location"}
    if isinstance(node, list):
        return [_without(v) for v in node]
    return node


def _holds_query(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("class") == "SUBQUERY" or node.get("type") in ("SELECT_NODE", "TABLE_FUNCTION"):
            return True
        return any(_holds_query(v) for v in node.values())
    if isinstance(node, list):
        return any(_holds_query(v) for v in node)
    return False


def export_sft(
    lake: Lake,
    dest: Path | str,
    *,
    where: str | None = None,
    max_rows_per_shard: int = 50_000,
    split: str = "train",
    overwrite: bool = False,
) -> ExportResult:
    """Successful trajectories as TRL conversational data: `dest/data/{split}-*.parquet`.

    The shards appear all at once (written to a temporary directory, then renamed), in
    trajectory_id order, so the same lake snapshot always exports the same bytes of data.
    """
    given = str(dest)
    dest = Path(dest).expanduser().resolve()
    if max_rows_per_shard < 1:
        raise ExportError(f"max_rows_per_shard={max_rows_per_shard}: use 1 or more")
    if not re.fullmatch(r"\w+(\.\w+)*", split):
        raise ExportError(f"split={split!r}: use a name like train, test or validation")
    _check_dest(dest, given, overwrite, lake.out)
    query = sft_query(where)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "data").mkdir(parents=True)
    try:
        parts = _write_parts(lake, tmp / "data", query, max_rows_per_shard)
        rows = sum(count for _, count in parts)
        shards = _name_shards([path for path, _ in parts], split)
        marker = {
            "format": "sft",
            "split": split,
            "rows": rows,
            "shards": [f"data/{path.name}" for path in shards],
            "where": where,
            "lake": str(lake.out),
            "snapshot_id": lake.snapshot_id(),
            "created_at": datetime.now(UTC).isoformat(),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(rows, [dest / "data" / path.name for path in shards])


def _check_dest(dest: Path, given: str, overwrite: bool, lake_out: Path) -> None:
    """Refuse a destination whose replacement could delete anything but an earlier export."""
    shown = f"--dest {given}" if given == str(dest) else f"--dest {given} ({dest})"
    fix = "choose a new folder for the export, e.g. --dest ./sft-data"
    guarded = {
        "the lake's folder": lake_out,
        "the working folder": Path.cwd().resolve(),
        "the home folder": Path.home().resolve(),
    }
    for what, folder in guarded.items():
        if dest == folder or dest in folder.parents:
            raise ExportError(f"{shown} is or contains {what} {folder}: {fix}")
    if lake_out in dest.parents:
        raise ExportError(f"{shown} lies inside the lake's folder {lake_out}: {fix} outside it")
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{shown} is a file: choose a folder")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not _is_export(dest):
        raise ExportError(
            f"{shown} is not empty and holds no trajforge export (no {MARKER}): {fix}; "
            "--overwrite replaces only an earlier export"
        )
    if not overwrite:
        raise ExportError(f"{shown} holds an earlier export: pass --overwrite to replace it, or {fix}")


def _is_export(folder: Path) -> bool:
    try:
        return "format" in json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, TypeError):
        return False


def _sft_rows(batch: pa.RecordBatch) -> Iterator[dict]:
    for row in batch.to_pylist():
        yield {
            "messages": messages(row["env"], row["instruction"], row["steps"] or []),
            "trajectory_id": row["trajectory_id"],
            "task_id": row["task_id"],
            "env": row["env"],
            "total_reward": row["total_reward"],
        }


def _write_parts(lake: Lake, data: Path, query: str, per_shard: int) -> list[tuple[Path, int]]:
    """Shards of `per_shard` rows under temporary names (the total is not known yet)."""
    parts: list[tuple[Path, int]] = []
    buffer: list[dict] = []

    def flush() -> None:
        path = data / f"part-{len(parts):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(buffer, schema=SFT), path, compression="zstd")
        parts.append((path, len(buffer)))
        buffer.clear()

    # The reader is drained to the end: an unread result would block the lake's connection.
    for batch in lake.batches(query, rows_per_batch=min(per_shard, 10_000)):
        for row in _sft_rows(batch):
            buffer.append(row)
            if len(buffer) == per_shard:
                flush()
    if buffer or not parts:
        flush()  # an empty export still yields one (empty) shard that loaders can open
    return parts


def _name_shards(parts: list[Path], split: str) -> list[Path]:
    total = len(parts)
    named = []
    for i, part in enumerate(parts):
        target = part.with_name(f"{split}-{i:05d}-of-{total:05d}.parquet")
        part.rename(target)
        named.append(target)
    return named


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished export into place; an old one is swapped out, then deleted."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)
