"""The trajforge command line. Heavy libraries are imported inside commands, so `--help`
answers at once."""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from trajforge import service_cli
from trajforge.schemas.kinds import SearchMethod, values

app = typer.Typer(
    help="trajforge manufactures verified training data for LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


def _interrupted(signum: int, frame: Any) -> None:
    # With a message: Beam re-raises an exception from a step as a new one of its type with the
    # step's name added to its message, and a bare KeyboardInterrupt (no message) as a
    # RuntimeError, which Prefect would retry instead of stopping.
    raise KeyboardInterrupt("interrupted (Ctrl-C)")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


Search = StrEnum("Search", {v: v for v in values(SearchMethod)})


def _quiet_prefect(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # failures: our one line
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML run config")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder")] = None,
    catalog: CatalogOpt = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="environment (repeatable)")] = None,
    tasks: Annotated[int | None, typer.Option(help="tasks per environment")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the task pool and rollouts")] = None,
    search: Annotated[Search | None, typer.Option(help="search method")] = None,
    policy: Annotated[list[str] | None, typer.Option("--policy", help="policy SPEC (repeatable)")] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="model SPEC that verifies each trajectory")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="rollouts per task and policy (best_of_n)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="steps per episode")] = None,
    concurrency: Annotated[int | None, typer.Option(help="searches in flight per worker")] = None,
    commit_every: Annotated[
        int | None, typer.Option("--commit-every", help="commit every N tasks (resumes after the last)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="stage and validate, do not commit")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="if this run is running elsewhere, wait for it instead of exiting")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
) -> None:
    """Run (or resume) the pipeline: tasks -> rollouts -> verify -> validate -> commit.

    Arguments after `--` are Beam pipeline options, e.g.
    `trajforge run -- --direct_num_workers 2 --direct_running_mode multi_processing`.
    """
    from trajforge.flows.config import check_runnable, load_config
    from trajforge.schemas.errors import ConfigError, ValidationFailed

    try:
        cfg = load_config(
            config,
            out=out,
            catalog=catalog,
            envs=env or None,
            tasks=tasks,
            seed=seed,
            search=search.value if search else None,
            policies=policy or None,
            samples=samples,
            max_steps=max_steps,
            judge=judge,
            concurrency=concurrency,
            commit_every=commit_every,
        )
        if ctx.args:
            cfg = cfg.model_copy(update={"pipeline_options": cfg.pipeline_options + list(ctx.args)})
        check_runnable(cfg)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    _quiet_prefect(verbose)
    from trajforge.flows.run import run_flow
    from trajforge.flows.staging import RunDir, RunLocked

    signal.signal(signal.SIGINT, _interrupted)
    try:
        # Held here too (the flow's lock is re-entrant), so a second run is refused before Prefect starts.
        with RunDir(cfg.out, cfg.run_id).lock(wait=wait):
            summary = run_flow(cfg, dry_run=dry_run)
    except KeyboardInterrupt:  # a hung search's thread is a daemon: exit does not wait for it
        raise fail(
            f"run {cfg.run_id} interrupted; nothing was committed; run the same command again to resume",
            code=130,
        ) from None
    except RunLocked as exc:
        raise fail(str(exc)) from None
    except ValidationFailed as exc:
        raise fail(str(exc), code=1) from None
    except Exception as exc:  # noqa: BLE001 - one line for the user; the run folder keeps the state
        raise fail(
            f"run {cfg.run_id} failed: {type(exc).__name__}: {exc}; nothing was committed; "
            "run the same command again to resume (add -v for Prefect's logs)",
            code=1,
        ) from None
    _print_summary(cfg, summary)


def _print_summary(cfg: Any, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if summary["status"] == "already_committed":
        console.print(f"Run {summary['run_id']} is already in the lake: nothing to do.")
    else:
        counts = summary["counts"]
        failed = sum(v for k, v in counts.items() if k.startswith("failed:"))
        table = Table(title=f"run {summary['run_id']}")
        pairs = sum(v for k, v in counts.items() if k.startswith("pairs:"))
        for col in ("tasks", "trajectories", "successes", "pairs", "failed items", "env steps", "wall s"):
            table.add_column(col, justify="right")
        table.add_row(
            str(counts.get("tasks", 0)),
            str(counts.get("trajectories", 0)),
            str(counts.get("successes", 0)),
            str(pairs),
            str(failed),
            str(summary["env_steps"]),
            f"{summary['wall_s']:.1f}",
        )
        console.print(table)
        judged = {k: counts.get(f"judge:{k}", 0) for k in ("tp", "fp", "fn", "tn")}
        if any(judged.values()):
            tp, fp, fn, tn = judged.values()
            precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            console.print(
                f"Judge against the environment: precision {precision:.2f}, recall {recall:.2f}, "
                f"agreement {(tp + tn) / max(tp + fp + fn + tn, 1):.2f}"
            )
        added = summary.get("added")
        if added is None:
            console.print(
                "Dry run: validated and staged, nothing committed; run again without --dry-run to commit."
            )
        else:
            console.print(
                f"Added to the lake: {added.get('trajectories', 0)} trajectories, "
                f"{added.get('tasks', 0)} tasks (snapshot {summary.get('snapshot_id')})."
            )
    console.print(f"Data: {cfg.out.resolve()}")
    out_flag = "" if cfg.out == DEFAULT_OUT else f" --out {cfg.out}"
    query = "SELECT env, policy, count(*) AS n, avg(success::int) AS success FROM trajectories GROUP BY ALL"
    console.print(f'Try: {_invoked_as()} sql{out_flag} "{query}"', soft_wrap=True, highlight=False)


def _invoked_as() -> str:
    """How the user called us (e.g. `.venv/bin/trajforge`), so the hint can be pasted as is."""
    argv0 = sys.argv[0]
    return argv0 if "/" in argv0 and not argv0.endswith(".py") else "trajforge"


def _open_lake(out: Path, snapshot: int | None = None, catalog: str | None = None, **limits: Any) -> Any:
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


def _emit(table: Any, fmt: Format) -> None:
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


@app.command()
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
    with _open_lake(out, snapshot, catalog) as lake:
        try:
            result = lake.sql(query, timeout_s=timeout or None)
        except QueryTimeout as exc:
            raise fail(f"{exc}; narrow the query (WHERE, LIMIT) or pass --timeout SECONDS") from None
        except LakeError as exc:
            raise fail(str(exc)) from None
    _emit(result, format)


# Games rich enough for the goal kinds (cut, cook, open) unless the environment is named alone.
TASK_ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "textworld": {"options": {"cut": True, "cook": True, "open": True}}
}


@app.command()
def tasks(
    env: Annotated[list[str] | None, typer.Option("--env", help="environment (repeatable)")] = None,
    out: OutOpt = DEFAULT_OUT,
    instances: Annotated[int, typer.Option(min=1, help="instances (base tasks) per environment")] = 2,
    seed: Annotated[int, typer.Option(help="seed of the instances and the exploration")] = 0,
    explore_steps: Annotated[int, typer.Option(min=0, help="exploration steps per instance")] = 150,
    attempts: Annotated[int, typer.Option(min=1, help="searches per solve-rate estimate")] = 3,
    policy: Annotated[str, typer.Option(help="policy SPEC of the solve-rate search")] = "random",
    max_steps: Annotated[int, typer.Option(min=1, help="steps per solve-rate episode")] = 10,
    source: Annotated[
        list[str] | None, typer.Option("--source", help="template, explored, curriculum")
    ] = None,
    embeddings: Annotated[bool, typer.Option(help="MiniLM near-duplicate layer")] = True,
    decontaminate: Annotated[
        Path | None, typer.Option(help="evaluation set (JSONL or lines) whose tasks must not be made")
    ] = None,
) -> None:
    """Synthesize tasks with verifiable goals (no trajectories) and commit them to the lake."""
    from trajforge.flows.tasks import synthesize_tasks
    from trajforge.schemas.errors import TrajforgeError
    from trajforge.synthesizers.tasks import SOURCES, SynthesisSettings

    sources = tuple(source or SOURCES)
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise fail(f"--source: {bad[0]!r} is not a task source; use some of {', '.join(SOURCES)}")
    envs = {name: TASK_ENV_DEFAULTS.get(name, {}) for name in env or ["textworld"]}
    settings = SynthesisSettings(
        instances=instances,
        sources=sources,
        explore_steps=explore_steps,
        attempts=attempts,
        embeddings=embeddings,
    )
    try:
        summary = synthesize_tasks(out, envs, settings, policy, max_steps, seed, decontaminate)
    except TrajforgeError as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
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
        with _open_lake(out, catalog=catalog) as lake:
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
    _emit(pa.Table.from_pylist(rows), format)


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


ExportFormat = StrEnum("ExportFormat", {v: v for v in ("sft", "dpo", "kto", "prm")})
ExportStyle = StrEnum("ExportStyle", {v: v for v in ("trl", "sharegpt", "openai")})


@app.command()
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
        with _open_lake(out, snapshot, catalog, **reader_limits()) as lake:
            result = export(lake, dest, spec, overwrite=overwrite)
    except (ExportError, LakeError) as exc:
        raise fail(str(exc)) from None
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    dropped = f"; left out: {json.dumps(result.dropped)}" if result.dropped else ""
    typer.echo(
        f"wrote {result.rows} {format.value} rows ({counts}) to {len(result.shards)} shard(s) under {dest} "
        f"from snapshot {result.snapshot_id}{dropped}"
    )


@app.command()
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
    _emit(pa.Table.from_pylist(rows), format)


class TrainFormat(StrEnum):
    sft = "sft"
    dpo = "dpo"


@app.command()
def train(
    model: Annotated[
        str, typer.Option("--model", help="scratch, smollm2, a .gguf file or a saved model directory")
    ],
    out: Annotated[Path, typer.Option("--out", help="new folder for the trained model")],
    data: Annotated[
        Path | None, typer.Option("--data", help="folder of training shards (trajforge export)")
    ] = None,
    format: Annotated[TrainFormat, typer.Option("--format", help="sft (messages) or dpo")] = TrainFormat.sft,
    steps: Annotated[int, typer.Option(help="optimizer steps (0: write the starting model)")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per step")] = 4,
    learning_rate: Annotated[
        float | None, typer.Option(help="default: 3e-3 from scratch, 1e-5 for a pretrained model")
    ] = None,
    max_length: Annotated[int, typer.Option(min=16, help="tokens per row (longer rows are cut)")] = 2048,
    seed: Annotated[int, typer.Option(help="seed of the initial weights and data order")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (1 on a busy machine)")] = 1,
) -> None:
    """Fine-tune a model on an export with TRL (a recipe; needs the train extra)."""
    from trajforge.recipes.train import TrainError, TrainSettings
    from trajforge.recipes.train import train as run_training

    settings = TrainSettings(
        format.value, data, model, out, steps, batch_size, learning_rate, max_length, seed=seed,
        threads=threads,
    )
    try:
        result = run_training(settings)
    except TrainError as exc:
        raise fail(str(exc)) from None
    loss = f", loss {result.losses[0]} -> {result.losses[-1]}" if result.losses else ""
    typer.echo(
        f"trained {result.parameters:,} parameters for {result.steps} steps on {result.rows} rows in "
        f"{result.wall_s} s{loss}; use it as --policy hf:{result.out}"
    )


class Engine(StrEnum):
    auto = "auto"
    vllm = "vllm"
    transformers = "transformers"


@app.command("serve-model")
def serve_model(
    model: Annotated[Path | None, typer.Option("--model", help="a saved model directory")] = None,
    engine: Annotated[
        Engine, typer.Option(help="vllm where vLLM and a GPU exist; else transformers")
    ] = Engine.auto,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    name: Annotated[
        str | None, typer.Option(help="served model name (default: the directory's name)")
    ] = None,
    tiny: Annotated[
        Path | None,
        typer.Option("--tiny", help="build a tiny random model in this folder and serve it (tests)"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TRAJFORGE_SERVE_API_KEY",
            show_envvar=True,
            help="require this bearer key on /v1 (as `vllm serve --api-key`)",
        ),
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            "--max-model-len",
            min=1,
            help="context window in tokens, prompt and completion (default: the model config's)",
        ),
    ] = None,
) -> None:
    """Serve a model over the OpenAI-compatible API (chat, completions, logprobs, choices)."""
    if (model is None) == (tiny is None):
        raise fail("serve-model: pass exactly one of --model PATH or --tiny DIR")
    from trajforge.inference.serve import serve_model as serve

    if tiny is not None:
        from trajforge.inference.tiny import build_tiny_model

        model = build_tiny_model(tiny)
    typer.echo(f"serving {name or Path(str(model)).name} at http://{host}:{port}/v1", err=True)
    try:
        serve(
            model,
            host=host,
            port=port,
            name=name,
            engine=engine.value,
            api_key=api_key,
            max_model_len=max_model_len,
        )
    except (ValueError, OSError) as exc:
        raise fail(f"serve-model: {exc}") from None


service_cli.register(app)  # migrate (trajforge/service_cli.py)

if __name__ == "__main__":
    app()
