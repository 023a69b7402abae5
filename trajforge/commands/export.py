"""`trajforge export` and `trajforge exports`: training shards out of the lake, and their record."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from trajforge.commands.common import DEFAULT_OUT, CatalogOpt, Format, OutOpt, emit, fail, open_lake
from trajforge.schemas.kinds import values

ExportFormat = StrEnum("ExportFormat", {v: v for v in ("sft", "dpo", "kto", "prm")})
ExportStyle = StrEnum("ExportStyle", {v: v for v in ("trl", "sharegpt", "openai")})


def export(
    dest: Annotated[Path, typer.Option("--dest", help="folder to write the dataset into")],
    format: Annotated[ExportFormat, typer.Option("--format", help="sft, dpo, kto or prm")] = ExportFormat.sft,
    style: Annotated[
        ExportStyle, typer.Option("--style", help="trl (Parquet), sharegpt (LLaMA-Factory) or openai (JSONL)")
    ] = ExportStyle.trl,
    out: OutOpt = DEFAULT_OUT,
    where: Annotated[
        str | None,
        typer.Option(help="one condition on the rows' table (trajectories; pairs for dpo/kto)"),
    ] = None,
    snapshot: Annotated[int | None, typer.Option(help="export the lake as of this snapshot")] = None,
    split: Annotated[
        str, typer.Option(help="splits by task hash, e.g. train=0.95,test=0.05 (train, validation, test)")
    ] = "train=1",
    max_shard_rows: Annotated[int, typer.Option("--max-shard-rows", help="rows per shard")] = 50_000,
    min_gap: Annotated[
        float | None, typer.Option("--min-gap", help="dpo/kto: keep pairs with q_chosen - q_rejected >= X")
    ] = None,
    sources: Annotated[
        list[str] | None, typer.Option("--sources", help="dpo/kto: pair sources (repeatable)")
    ] = None,
    tool_calls: Annotated[
        bool,
        typer.Option(
            "--tool-calls", help="actions as calls of a tool act(action), observations as its answers"
        ),
    ] = False,
    threshold: Annotated[
        float, typer.Option(help="prm: a step whose value reaches this is labelled good")
    ] = 0.5,
    license: Annotated[
        str, typer.Option("--license", help="the licence field of the dataset card")
    ] = "other",
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in --dest")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Export training shards (Hugging Face layout: data/{split}-00000-of-0000N.parquet, README.md card)."""
    from trajforge.schemas.kinds import PairSource
    from trajforge.store.export import (
        ExportError,
        ExportSpec,
        export,
        parse_split,
        reader_limits,
    )
    from trajforge.store.lake import Lake, LakeError

    try:
        for source in sources or []:
            if source not in values(PairSource):
                raise ExportError(f"--sources {source!r}: use {', '.join(values(PairSource))}")
        spec = ExportSpec(
            format=format.value,
            style=style.value,
            where=where,
            split=parse_split(split),
            max_shard_rows=max_shard_rows,
            min_gap=min_gap,
            sources=tuple(sources or ()),
            tool_calls=tool_calls,
            threshold=threshold,
            license=license,
        )
        if not Lake.exists(out, catalog):
            raise ExportError(f"there is no lake at {out}: run `trajforge run --out {out}` first")
        with open_lake(out, snapshot, catalog, **reader_limits()) as lake:
            result = export(lake, dest, spec, overwrite=overwrite)
    except (ExportError, LakeError) as exc:
        raise fail(str(exc)) from None
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    dropped = f"; left out: {json.dumps(result.dropped)}" if result.dropped else ""
    typer.echo(
        f"wrote {result.rows} {format.value} rows ({counts}) to {len(result.shards)} shard(s) under {dest} "
        f"from snapshot {result.snapshot_id}{dropped}"
    )


def exports(
    out: OutOpt = DEFAULT_OUT, format: Annotated[Format, typer.Option("--format")] = Format.table
) -> None:
    """List exports: what was exported from which snapshot, with which filter, to where."""
    import pyarrow as pa

    from trajforge.store.export import list_exports

    rows = list_exports(out)
    if not rows:
        raise fail(
            f"no exports recorded under {out}; make one with `trajforge export --out {out} --dest DIR`"
        )
    for row in rows:
        row["split"] = json.dumps(row.get("split"))
        row["counts"] = json.dumps(row.get("counts"))
        if format is Format.table:  # the columns that fit a terminal; csv and json have them all
            row["created_at"] = str(row["created_at"])[:19]
            for key in ("split", "config_hash"):
                row.pop(key, None)
    emit(pa.Table.from_pylist(rows), format)
