"""`trajforge run`: run (or resume) the pipeline and print its summary."""

from __future__ import annotations

import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from trajforge.commands.common import DEFAULT_OUT, CatalogOpt, fail
from trajforge.schemas.kinds import SearchMethod, values


def _interrupted(signum: int, frame: Any) -> None:
    # With a message: Beam re-raises an exception from a step as a new one of its type with the
    # step's name added to its message, and a bare KeyboardInterrupt (no message) as a
    # RuntimeError, which Prefect would retry instead of stopping.
    raise KeyboardInterrupt("interrupted (Ctrl-C)")


Search = StrEnum("Search", {v: v for v in values(SearchMethod)})


def _quiet_prefect(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # failures: our one line
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here


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
