"""`trajforge tasks`: synthesize tasks with verifiable goals and commit them to the lake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from trajforge.commands.common import DEFAULT_OUT, OutOpt, fail

# Games rich enough for the goal kinds (cut, cook, open) unless the environment is named alone.
TASK_ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "textworld": {"options": {"cut": True, "cook": True, "open": True}}
}


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
