"""One export from start to finish: query -> examples -> style -> check -> shards, card, marker.

The shards appear all at once (written to a temporary folder, then renamed) and in (task, id)
order, so the same lake snapshot always exports the same bytes. Memory is bounded: rows stream
from DuckDB in batches, and only a row group per split and one task's keys are held.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from trajforge.store.export import card, checks, convert, layout, query
from trajforge.store.export.query import ExportError
from trajforge.store.export.record import record_export
from trajforge.store.export.styles import STYLE_FORMATS, make_style
from trajforge.store.lake import Lake

# DuckDB's memory for an export (its ORDER BY spills to disk beyond it): with the Python side's row
# groups, an export stays under 1 GB whatever the lake's size (bench/export.py).
MEMORY_LIMIT = "512MiB"
# One DuckDB thread: the Python side sets the pace anyway, and each thread holds its own sort
# buffers, which can exhaust a small limit before anything spills.
EXPORT_THREADS = 1


def reader_limits() -> dict[str, Any]:
    """Lake.open's limits for an export: memory, threads, and a private spill folder."""
    spill = Path(tempfile.gettempdir()) / f"trajforge-export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return {"memory_limit": MEMORY_LIMIT, "threads": EXPORT_THREADS, "spill_dir": spill}


@dataclass(frozen=True)
class ExportSpec:
    """What to export and how (the command line's flags)."""

    format: str = "sft"
    style: str = "trl"
    where: str | None = None
    split: dict[str, float] = field(default_factory=lambda: {"train": 1.0})
    max_shard_rows: int = 50_000
    min_gap: float | None = None
    sources: tuple[str, ...] = ()
    tool_calls: bool = False
    threshold: float = 0.5
    license: str = "other"


@dataclass(frozen=True)
class ExportResult:
    rows: int
    shards: list[Path]
    counts: dict[str, int]  # rows per split
    dropped: dict[str, int]
    snapshot_id: int | None
    config_hash: str


def _code_version() -> str:
    try:
        return version("trajforge")
    except PackageNotFoundError:
        return "0"


def check_spec(spec: ExportSpec) -> None:
    if spec.style not in STYLE_FORMATS:
        raise ExportError(f"--style {spec.style!r}: use one of {', '.join(STYLE_FORMATS)}")
    if spec.format not in STYLE_FORMATS[spec.style]:
        raise ExportError(
            f"--format {spec.format} --style {spec.style}: the {spec.style} style writes "
            f"{', '.join(STYLE_FORMATS[spec.style])}; for {spec.format} use --style trl"
        )
    if spec.max_shard_rows < 1:
        raise ExportError(f"--max-shard-rows {spec.max_shard_rows}: use 1 or more")
    pairs = spec.format in ("dpo", "kto")
    if (spec.sources or spec.min_gap is not None) and not pairs:
        raise ExportError(
            "--sources and --min-gap choose preference pairs: use them with --format dpo or kto"
        )
    for name in spec.split:
        if name not in layout.SPLIT_NAMES:
            raise ExportError(f"split {name!r}: use train, validation or test")
    layout.check_name(spec.license, "--license")


def export(lake: Lake, dest: Path | str, spec: ExportSpec, *, overwrite: bool = False) -> ExportResult:
    """Write `spec`'s rows of the lake (as opened: its snapshot) to `dest`; see the module doc."""
    given = str(dest)
    dest = Path(dest).expanduser().resolve()
    check_spec(spec)
    layout.check_dest(dest, given, overwrite, lake.out)
    sql = query.format_query(spec.format, spec.where, spec.sources, spec.min_gap)
    # Real tool calls in the selection need the tool-call shape (a `tools` column, JSON messages).
    tooled = spec.tool_calls or (spec.format == "sft" and query.has_tools(lake, sql))
    style = make_style(spec.style, spec.format, tooled)
    snapshot = lake.snapshot_id()
    settings = {**asdict(spec), "sources": list(spec.sources), "snapshot_id": snapshot}
    config_hash = hashlib.sha256(
        json.dumps({**settings, "code_version": _code_version()}, sort_keys=True).encode()
    ).hexdigest()[:16]
    opts = convert.Options(spec.tool_calls, spec.threshold, query.constant_thoughts(lake))
    tmp = layout.temporary_next_to(dest)
    try:
        writers = {s: layout.SplitWriter(tmp / "data", s, style, spec.max_shard_rows) for s in spec.split}
        dropped: Counter = Counter()
        sources: Counter = Counter()
        for example in _examples(lake, sql, spec.format, opts, dropped):
            row = style.row(example)
            reason = checks.check(spec.style, spec.format, row)  # before the writer encodes it
            if reason:
                dropped[reason] += 1
                continue
            sources[example.meta.get("source", example.meta.get("policy", "?"))] += 1
            writers[layout.split_of(example.task_id, spec.split)].add(row)
        shards = {s: layout.name_shards(w.close(), s) for s, w in writers.items()}
        relative = {s: [(f"data/{p.name}", n) for p, n in files] for s, files in shards.items()}
        meta = {
            **settings,
            "sources_filter": list(spec.sources),
            "code_version": _code_version(),
            "config_hash": config_hash,
            "dropped": dict(dropped),
            "sources": dict(sources),
        }
        (tmp / "README.md").write_text(card.card(meta, relative, str(dest)))
        if spec.style == "sharegpt":
            info = card.dataset_info(meta, relative)
            (tmp / "dataset_info.json").write_text(json.dumps(info, indent=1) + "\n")
        counts = {s: sum(n for _, n in files) for s, files in shards.items()}
        marker = {
            **meta,
            "rows": sum(counts.values()),
            "counts": counts,
            "shards": [path for files in relative.values() for path, _ in files],
            "lake": str(lake.out),
            "dest": str(dest),
            "created_at": datetime.now(UTC).isoformat(),
        }
        (tmp / layout.MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        layout.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record_export(lake.out, marker)
    paths = [dest / "data" / p.name for files in shards.values() for p, _ in files]
    return ExportResult(sum(counts.values()), paths, counts, dict(dropped), snapshot, config_hash)


def _examples(lake: Lake, sql: str, fmt: str, opts: convert.Options, dropped: Counter) -> Iterator[Any]:
    rows = query.stream(lake, query.ordered_queries(lake, sql))
    if fmt == "sft":
        return convert.sft_examples(rows, opts)
    if fmt == "prm":
        return convert.prm_examples(rows, opts)
    make = convert.dpo_examples if fmt == "dpo" else convert.kto_examples
    return make(rows, opts, dropped)


def export_sft(
    lake: Lake,
    dest: Path | str,
    *,
    where: str | None = None,
    max_rows_per_shard: int = 50_000,
    split: str = "train",
    overwrite: bool = False,
) -> ExportResult:
    """Successful trajectories as TRL conversations in one split (the original entry point)."""
    spec = ExportSpec(where=where, max_shard_rows=max_rows_per_shard, split={split: 1.0})
    return export(lake, dest, spec, overwrite=overwrite)
