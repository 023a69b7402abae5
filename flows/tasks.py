"""`trajforge tasks`: synthesize tasks for environments (no trajectories) and commit the verified
ones to `tasks` and every candidate, kept or dropped with its reason, to `task_candidates`, with
one `runs` row counting them. The run id is a hash of the settings and the code version, so the
same command twice adds nothing the second time."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trajforge.flows.config import code_version
from trajforge.schemas import arrow, ids
from trajforge.schemas.records import RunRecord
from trajforge.store.lake import Lake
from trajforge.synthesizers.policies import make_policy
from trajforge.synthesizers.search import Budget, SearchSettings
from trajforge.synthesizers.tasks import Embedder, SynthesisSettings, load_eval_set, synthesize


def synthesize_tasks(
    out: Path,
    envs: dict[str, dict[str, Any]],
    settings: SynthesisSettings,
    policy: str = "random",
    max_steps: int = 10,
    seed: int = 0,
    decontaminate: Path | None = None,
) -> dict[str, Any]:
    """Synthesize for each environment (name -> options) and commit; returns the summary."""
    eval_set = load_eval_set(decontaminate) if decontaminate else []  # bad input: before any work
    search = SearchSettings(method="rollout", max_steps=max_steps, budget=Budget(env_steps=max_steps))
    config = {
        "envs": envs,
        "settings": asdict(settings),
        "policy": policy,
        "max_steps": max_steps,
        "seed": seed,
        "decontaminate": ids.content_id("eval", items=[asdict(i) for i in eval_set]) if eval_set else None,
    }
    run_id = "tasks-" + ids.content_id("tasks-run", config=config, code=code_version())[:16]
    started = datetime.now(UTC)
    known: set[str] = set()
    if Lake.exists(out):
        with Lake.open(out, read_only=True) as lake:
            if lake.has_run(run_id):
                return {"run_id": run_id, "status": "already_committed"}
            known = set(lake.sql("SELECT task_id FROM tasks").column("task_id").to_pylist())
    embed = Embedder() if settings.embeddings else None
    counts: Counter = Counter()
    tasks: list[dict] = []
    candidates: list[dict] = []
    env_steps = 0
    for name, options in envs.items():
        result = synthesize(
            name, options, settings, search, make_policy(policy), seed, run_id, known, eval_set, embed
        )
        counts.update({f"{name}:{k}": v for k, v in result.counts.items()})
        tasks += result.tasks
        candidates += result.candidates
        env_steps += sum(result.env_steps.values())
        known |= {t["task_id"] for t in result.tasks}
    record = RunRecord(
        run_id=run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        status="committed",
        config_json=json.dumps(config, sort_keys=True),
        config_hash=ids.content_id("config", config=config),
        code_version=code_version(),
        counts=dict(counts),
        env_steps=env_steps,
    )
    with Lake.open(out) as lake:
        result = lake.commit(
            {
                "tasks": arrow.to_table(tasks, arrow.TASKS),
                "task_candidates": arrow.to_table(candidates, arrow.TASK_CANDIDATES),
            },
            record.row(),
        )
    return {
        "run_id": run_id,
        "status": "committed",
        "snapshot_id": result.snapshot_id,
        "added": result.added,
        "counts": dict(counts),
    }
