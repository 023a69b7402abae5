"""The synthesis stage of `trajforge run` (a `synthesis:` section): the run's tasks are synthesized
and verified (synthesizers.tasks, as `trajforge tasks` does) before the search, or taken from the
synthesized tasks already in the lake. Each planned task carries its synthesized row (goal, setup,
witness, generator, ...) so the pipeline's task rows keep them; every candidate, kept or dropped,
waits in the run folder (task_candidates.parquet) to be committed with the run, and the counts of
the synthesis in synthesis_counts.json. A run planned again (a retry) reuses both."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.flows.run_config import RunConfig
from trajforge.flows.staging import RunDir, write_json_atomic
from trajforge.pipelines.spec import planned_task
from trajforge.schemas import arrow
from trajforge.schemas.errors import ConfigError
from trajforge.store.lake import Lake

CANDIDATES, COUNTS = "task_candidates.parquet", "synthesis_counts.json"
# The columns of a synthesized task row that the pipeline's Task record takes over.
SYNTHESIZED = (
    "instruction",
    "source",
    "parent_task_id",
    "goal",
    "setup",
    "witness",
    "solve_rate",
    "attempts",
    "difficulty",
    "generator",
)


def _planned(row: dict[str, Any]) -> dict[str, Any]:
    return planned_task(row["env"], row["env_task"], row["seed"], task={k: row[k] for k in SYNTHESIZED})


def plan(config: RunConfig, run_dir: RunDir) -> list[dict[str, Any]]:
    """The run's synthesized tasks as planned specs (synthesizing them unless from the lake)."""
    assert config.synthesis is not None
    if config.synthesis.from_lake:
        return [_planned(r) for r in lake_tasks(config)]
    from trajforge.synthesizers.policies import make_policy
    from trajforge.synthesizers.search import Budget, SearchSettings
    from trajforge.synthesizers.tasks import Embedder, load_eval_set, synthesize

    syn = config.synthesis
    settings = syn.settings()
    eval_set = load_eval_set(syn.decontaminate) if syn.decontaminate else []
    search = SearchSettings(
        method="rollout", max_steps=config.max_steps, budget=Budget(env_steps=config.max_steps)
    )
    embed = Embedder() if settings.embeddings else None
    policy = make_policy(syn.policy, **config.model_options())
    known: set[str] = set()
    if Lake.exists(config.out, config.catalog):
        with Lake.open(config.out, read_only=True, catalog=config.catalog) as lake:
            known = set(lake.sql("SELECT task_id FROM tasks").column("task_id").to_pylist())
    counts: Counter = Counter()
    tasks: list[dict] = []
    candidates: list[dict] = []
    try:
        for env in config.envs:
            result = synthesize(
                env.name,
                env.options,
                settings,
                search,
                policy,
                config.seed,
                config.run_id,
                known,
                eval_set,
                embed,
            )
            counts.update({f"synthesis:{env.name}:{k}": v for k, v in result.counts.items()})
            counts[f"synthesis:{env.name}:env_steps"] += sum(result.env_steps.values())
            tasks += result.tasks
            candidates += result.candidates
            known |= {t["task_id"] for t in result.tasks}
    finally:
        getattr(policy, "close", lambda: None)()
    pq.write_table(arrow.to_table(candidates, arrow.TASK_CANDIDATES), run_dir.path / CANDIDATES)
    write_json_atomic(run_dir.path / COUNTS, dict(counts))
    return [_planned(t) for t in tasks]


def planned_before(run_dir: RunDir) -> bool:
    """Whether this run's synthesis is done (a retry plans from its saved plan instead)."""
    return (run_dir.path / COUNTS).exists() and run_dir.plan_path.exists()


def lake_tasks(config: RunConfig) -> list[dict[str, Any]]:
    """Up to `tasks` synthesized tasks per environment of the run, from the lake, by task id."""
    found: list[dict[str, Any]] = []
    if Lake.exists(config.out, config.catalog):
        with Lake.open(config.out, read_only=True, catalog=config.catalog) as lake:
            for env in config.envs:
                name = env.name.replace("'", "''")
                found += lake.sql(
                    f"SELECT * FROM tasks WHERE env = '{name}' AND goal IS NOT NULL "
                    f"ORDER BY task_id LIMIT {int(config.tasks)}"
                ).to_pylist()
    missing = sorted({e.name for e in config.envs} - {t["env"] for t in found})
    if missing:
        raise ConfigError(
            f"synthesis.from_lake: the lake in {config.out} holds no synthesized tasks of {missing[0]}; "
            f"make some first (trajforge tasks --env {missing[0]}) or drop from_lake"
        )
    return found


def candidates(run_dir: RunDir) -> dict[str, pa.Table]:
    """The tables the synthesis adds to the run's commit: its candidates, if it made any."""
    path = run_dir.path / CANDIDATES
    return {"task_candidates": pq.read_table(path)} if path.exists() else {}


def counts(run_dir: RunDir) -> Counter:
    try:
        return Counter(json.loads((run_dir.path / COUNTS).read_text()))
    except (OSError, ValueError):
        return Counter()
