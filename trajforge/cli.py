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

from trajforge.schemas.kinds import SearchMethod, values

app = typer.Typer(
    help="trajforge manufactures verified training data for LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

OutOpt = Annotated[Path, typer.Option("--out", help="folder of the lake and run records")]
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
            envs=env or None,
            tasks=tasks,
            seed=seed,
            search=search.value if search else None,
            policies=policy or None,
            samples=samples,
            max_steps=max_steps,
            judge=judge,
            concurrency=concurrency,
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


def _open_lake(out: Path, snapshot: int | None = None) -> Any:
    from trajforge.store.lake import READER_LOCK_TIMEOUT_S, Lake, LakeError

    try:
        return Lake.open(out, read_only=True, snapshot=snapshot, lock_timeout_s=READER_LOCK_TIMEOUT_S)
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
) -> None:
    """Query the lake with DuckDB SQL (read-only; files outside the lake are out of reach)."""
    from trajforge.store.lake import LakeError, QueryTimeout

    if timeout < 0:
        raise fail(f"--timeout {timeout:g}: use 0 (no limit) or a number of seconds")
    with _open_lake(out, snapshot) as lake:
        try:
            result = lake.sql(query, timeout_s=timeout or None)
        except QueryTimeout as exc:
            raise fail(f"{exc}; narrow the query (WHERE, LIMIT) or pass --timeout SECONDS") from None
        except LakeError as exc:
            raise fail(str(exc)) from None
    _emit(result, format)


@app.command()
def runs(
    out: OutOpt = DEFAULT_OUT, format: Annotated[Format, typer.Option("--format")] = Format.table
) -> None:
    """List runs: those in the lake and those that stopped before committing."""
    import pyarrow as pa

    from trajforge.flows.staging import list_run_dirs
    from trajforge.store.lake import Lake

    rows: list[dict[str, Any]] = []
    committed: set[str] = set()
    if Lake.exists(out):
        with _open_lake(out) as lake:
            for r in lake.runs().to_pylist():
                committed.add(r["run_id"])
                rows.append(
                    _run_row(
                        r["run_id"], r["status"], r["started_at"], dict(r["counts"] or []), r["snapshot_id"]
                    )
                )
    for run_dir in list_run_dirs(out):
        if run_dir.run_id not in committed:
            m = run_dir.manifest()
            rows.append(
                _run_row(
                    run_dir.run_id, m.get("status", "?"), m.get("started_at"), {}, None, m.get("summary", "")
                )
            )
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


class ExportFormat(StrEnum):
    sft = "sft"


@app.command()
def export(
    dest: Annotated[Path, typer.Option("--dest", help="folder to write the dataset into")],
    format: Annotated[ExportFormat, typer.Option("--format", help="sft")] = ExportFormat.sft,
    out: OutOpt = DEFAULT_OUT,
    where: Annotated[
        str | None, typer.Option(help="one condition on the trajectories columns, e.g. \"env = 'textworld'\"")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in --dest")] = False,
) -> None:
    """Export training shards (Hugging Face layout: data/train-00000-of-0000N.parquet)."""
    from trajforge.store.export import ExportError, export_sft
    from trajforge.store.lake import LakeError

    with _open_lake(out) as lake:
        try:
            result = export_sft(lake, dest, where=where, overwrite=overwrite)
        except (ExportError, LakeError) as exc:
            raise fail(str(exc)) from None
    typer.echo(f"wrote {result.rows} conversations to {len(result.shards)} shard(s) under {dest}")


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


if __name__ == "__main__":
    app()
