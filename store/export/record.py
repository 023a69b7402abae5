"""Every export is a record: one JSON line per finished export in `{out}/exports.jsonl`, beside
the lake's catalog (the export only reads the lake, so it adds no snapshot to it). `trajforge
exports` lists them with whether each destination still holds that export."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG = "exports.jsonl"
_FIELDS = (
    "created_at",
    "format",
    "style",
    "snapshot_id",
    "where",
    "split",
    "rows",
    "counts",
    "config_hash",
    "dest",
)


def record_export(out: Path, marker: dict[str, Any]) -> None:
    """Append one line (a single write on an O_APPEND file: concurrent exports do not interleave)."""
    line = json.dumps({k: marker.get(k) for k in _FIELDS}, ensure_ascii=False) + "\n"
    fd = os.open(out / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def list_exports(out: Path) -> list[dict[str, Any]]:
    """The recorded exports, oldest first, each with `status`: present, replaced (its folder now
    holds a later export) or missing."""
    try:
        lines = (out / LOG).read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others still count
        row["status"] = _status(row)
        rows.append(row)
    return rows


def _status(row: dict[str, Any]) -> str:
    from trajforge.store.export.layout import read_marker

    marker = read_marker(Path(row.get("dest") or "."))
    if marker is None:
        return "missing"
    same = marker.get("config_hash") == row.get("config_hash") and marker.get("created_at") == row.get(
        "created_at"
    )
    return "present" if same else "replaced"
