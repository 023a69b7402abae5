"""Where an export's bytes go: splits by task, shards named like a Hugging Face dataset repository
(`data/{split}-{i:05d}-of-{n:05d}.{parquet,jsonl}`), the destination's safety rules, and the
atomic swap into place. Row groups have a fixed size, so the same rows give the same bytes."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.store.export.query import ExportError
from trajforge.store.export.styles import Style, encode_json_columns, storage_schema

# Every export carries this file; --overwrite replaces only a folder that has it.
MARKER = ".trajforge-export.json"
# The split names `load_dataset("parquet", data_dir=...)` keeps (it drops any other silently).
SPLIT_NAMES = ("train", "validation", "test")
ROW_GROUP = 1_000


def parse_split(text: str) -> dict[str, float]:
    """`train=0.95,test=0.05` -> {"train": 0.95, "test": 0.05}; fractions must sum to 1."""
    fix = (
        f"--split {text!r}: use NAME=FRACTION pairs of train, validation, test summing to 1, "
        "e.g. train=0.95,test=0.05"
    )
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        try:
            fraction = float(value)
        except ValueError:
            raise ExportError(fix) from None
        if name not in SPLIT_NAMES or name in out or not 0 < fraction <= 1:
            raise ExportError(fix)
        out[name] = fraction
    if abs(sum(out.values()) - 1) > 1e-6:
        raise ExportError(fix)
    return out


def split_of(task_id: str, splits: dict[str, float]) -> str:
    """The split of a task: a hash of its id, so no task is in two splits, on any lake."""
    point = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in splits.items():
        edge += fraction
        if point < edge:
            return name
    return next(reversed(splits))


class SplitWriter:
    """The shards of one split, rolled over every `per_shard` rows, under temporary names."""

    def __init__(self, folder: Path, split: str, style: Style, per_shard: int) -> None:
        self.folder, self.split, self.style, self.per_shard = folder, split, style, per_shard
        self.parts: list[tuple[Path, int]] = []
        self._rows: list[dict[str, Any]] = []
        self._in_part = 0
        self._writer: pq.ParquetWriter | None = None
        self._file: Any = None

    def add(self, row: dict[str, Any]) -> None:
        if self._in_part == self.per_shard:
            self._close_part()
        if self._in_part == 0:
            self._open_part()
        self._in_part += 1
        self.parts[-1] = (self.parts[-1][0], self._in_part)
        if self._file is not None:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self._rows.append(encode_json_columns(row, self.style.schema))
        if len(self._rows) == ROW_GROUP:
            self._flush()

    def close(self) -> list[tuple[Path, int]]:
        if not self.parts:
            self._open_part()  # a split with no rows still has one (empty) shard that loaders open
        self._close_part()
        return self.parts

    def _open_part(self) -> None:
        path = self.folder / f"{self.split}-part-{len(self.parts):05d}.{self.style.suffix}"
        self.parts.append((path, 0))
        self._in_part = 0
        if self.style.schema is None:
            self._file = path.open("w", encoding="utf-8")
        else:
            self._writer = pq.ParquetWriter(path, self.style.schema, compression="zstd")

    def _flush(self) -> None:
        if self._rows and self._writer is not None:
            batch = pa.Table.from_pylist(self._rows, schema=storage_schema(self.style.schema))
            self._writer.write_table(batch.cast(self.style.schema), row_group_size=ROW_GROUP)
        self._rows.clear()

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        self._in_part = 0


def name_shards(parts: list[tuple[Path, int]], split: str) -> list[tuple[Path, int]]:
    total = len(parts)
    named = []
    for i, (part, rows) in enumerate(parts):
        target = part.with_name(f"{split}-{i:05d}-of-{total:05d}{part.suffix}")
        part.rename(target)
        named.append((target, rows))
    return named


def check_dest(dest: Path, given: str, overwrite: bool, lake_out: Path) -> None:
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
    if read_marker(dest) is None:
        raise ExportError(
            f"{shown} is not empty and holds no trajforge export (no {MARKER}): {fix}; "
            "--overwrite replaces only an earlier export"
        )
    if not overwrite:
        raise ExportError(f"{shown} holds an earlier export: pass --overwrite to replace it, or {fix}")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return marker if isinstance(marker, dict) and "format" in marker else None


def temporary_next_to(dest: Path) -> Path:
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "data").mkdir(parents=True)
    return tmp


def replace(tmp: Path, dest: Path) -> None:
    """Move the finished export into place; an old one is swapped out, then deleted."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)


def check_name(value: str, what: str) -> None:
    if not re.fullmatch(r"[\w.-]+", value):
        raise ExportError(f"{what}={value!r}: use letters, digits, '.', '-' or '_'")
