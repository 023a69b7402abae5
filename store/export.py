"""Training shards out of the lake, laid out like a Hugging Face dataset repository."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.schemas.conversation import messages
from trajforge.store.lake import Lake, LakeError

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
    extra = f" AND ({where})" if where else ""
    return (
        "SELECT trajectory_id, task_id, env, instruction, steps, total_reward "
        f"FROM trajectories WHERE success{extra} ORDER BY trajectory_id"
    )


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
    dest = Path(dest).resolve()
    if max_rows_per_shard < 1:
        raise ExportError(f"max_rows_per_shard={max_rows_per_shard}: use 1 or more")
    if not re.fullmatch(r"\w+(\.\w+)*", split):
        raise ExportError(f"split={split!r}: use a name like train, test or validation")
    _check_dest(dest, overwrite)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "data").mkdir(parents=True)
    try:
        parts = _write_parts(lake, tmp / "data", sft_query(where), max_rows_per_shard)
        rows = sum(count for _, count in parts)
        shards = _name_shards([path for path, _ in parts], split)
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(rows, [dest / "data" / path.name for path in shards])


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"export destination {dest} is a file: choose a directory")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise ExportError(
            f"export destination {dest} is not empty: choose an empty directory "
            "or pass --overwrite to replace it"
        )


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
