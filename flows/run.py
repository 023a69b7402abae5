"""The Prefect flow of a whole run: plan tasks -> pipeline -> validate -> commit.

A run's id is its config fingerprint, so running the same config again resumes it: a run
already in the lake does nothing, a run whose batch is staged goes straight to validation.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from trajforge.config import RunConfig, code_version
from trajforge.environments import registry
from trajforge.flows.staging import RunDir, write_json_atomic
from trajforge.pipelines import synthesis
from trajforge.schemas import arrow
from trajforge.schemas.records import RunRecord
from trajforge.store.lake import Lake
from trajforge.validators.dedup import dedupe
from trajforge.validators.expectations import validate_batch
from trajforge.validators.judge import agreement


class ValidationFailed(RuntimeError):
    """The staged batch broke an expectation: nothing was committed."""

    def __init__(self, summary: str, report_path: str) -> None:
        super().__init__(f"validation failed, nothing committed: {summary} (report: {report_path})")
        self.report_path = report_path


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def plan_tasks(config: RunConfig) -> list[dict[str, Any]]:
    """Environment-native task specs; environments that need assets (TextWorld games) build
    them here, once, before the pipeline fans out."""
    specs: list[dict[str, Any]] = []
    for env_spec in config.envs:
        env = registry.make(env_spec.name, **env_spec.options)
        try:
            found = env.task_specs(config.tasks, config.seed)
            prepare = getattr(env, "prepare", None)
            if prepare is not None:
                prepare(found, workers=config.workers)
        finally:
            env.close()
        specs += [{"env": env_spec.name, "env_task": s.env_task, "seed": s.seed} for s in found]
    return specs


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def stage_batch(config: RunConfig, specs: list[dict[str, Any]], run_dir: RunDir) -> None:
    run_dir.clear_staging()  # a half-written staging from a crash is never mixed in
    synthesis.run(
        config.pipeline_options,
        specs=specs,
        staging=run_dir.staging,
        run_id=run_dir.run_id,
        env_options={e.name: e.options for e in config.envs},
        policies=config.policies,
        settings=config.search_settings(),
        concurrency=config.concurrency,
        pair_gap=config.mcts.pair_gap,
        keep_terminal_paths=config.mcts.keep_terminal_paths,
        max_trajectory_pairs=config.max_trajectory_pairs,
        model_options=config.model_options(),
        judge=config.judge,
        critique=config.critique,
        requests_in_flight=config.requests_in_flight,
        deadline_margin_s=config.deadline_margin_s,
    )
    run_dir.set_status("staged")


def _deduped(run_dir: RunDir) -> tuple[dict[str, pa.Table], Counter]:
    tables, counts = {}, Counter()
    for name in synthesis.STAGED_TABLES:
        schema, key = arrow.TABLES[name]
        staged = run_dir.read_staged(name)
        if not staged.schema.equals(schema, check_metadata=False):
            tables[name] = staged  # validation reports the drift; nothing to dedupe safely
            continue
        result = dedupe(staged.to_pylist(), key)
        counts[f"dropped:duplicate_emission:{name}"] += result.dropped
        tables[name] = arrow.to_table(result.rows, schema)
    return tables, counts


@task(cache_policy=NO_CACHE)
def validate(config: RunConfig, run_dir: RunDir) -> tuple[dict[str, pa.Table], Counter]:
    """Dedupe re-emitted records, then gate the batch on the expectation suites."""
    tables, counts = _deduped(run_dir)
    report = validate_batch(tables, max_steps=config.max_steps, pair_gap=config.mcts.pair_gap)
    write_json_atomic(run_dir.report, report.to_dict())
    if not report.success:
        run_dir.set_status("validation_failed", summary=report.summary())
        raise ValidationFailed(report.summary(), str(run_dir.report))
    return tables, counts


def _count(config: RunConfig, tables: dict[str, pa.Table], counts: Counter) -> None:
    trajectories = tables["trajectories"].to_pylist()
    counts["tasks"] = tables["tasks"].num_rows
    counts["trajectories"] = len(trajectories)
    counts["successes"] = sum(1 for t in trajectories if t["success"])
    counts["nodes"] = tables["nodes"].num_rows
    for source in tables["pairs"].column("source").to_pylist():
        counts[f"pairs:{source}"] += 1
    if config.judge:
        counts.update(agreement(trajectories))
        counts["judge:failed"] += sum(
            1 for t in trajectories if (t["critique"] or "").startswith("judge failed")
        )
    for fail in tables["failures"].to_pylist():
        counts[f"failed:{fail['stage']}:{fail['reason']}"] += 1
    for t in trajectories:
        counts[f"stop:{t['stop_reason']}"] += 1
        counts["model:calls"] += t["model_calls"] or 0
        counts["model:cached_calls"] += t["cached_calls"] or 0


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def commit(config: RunConfig, run_dir: RunDir, tables: dict[str, pa.Table], record: RunRecord) -> dict:
    with Lake.open(config.out) as lake:
        result = lake.commit(tables, record.row())
    run_dir.set_status("committed", snapshot_id=result.snapshot_id, added=result.added)
    run_dir.clear_staging()
    return {"snapshot_id": result.snapshot_id, "added": result.added}


def _run_record(
    config: RunConfig, tables: dict[str, pa.Table], counts: Counter, started: datetime
) -> RunRecord:
    traj = tables["trajectories"]
    total = lambda col: int(pa.compute.sum(traj[col]).as_py() or 0)  # noqa: E731
    return RunRecord(
        run_id=config.run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        status="committed",
        config_json=config.model_dump_json(),
        config_hash=config.config_hash,
        code_version=code_version(),
        counts={k: v for k, v in counts.items() if v},
        tokens_in=total("tokens_in"),
        tokens_out=total("tokens_out"),
        cost_usd=float(pa.compute.sum(traj["cost_usd"]).as_py() or 0.0),
        env_steps=total("env_steps"),
        cached_tokens_in=total("cached_tokens_in"),
        cached_tokens_out=total("cached_tokens_out"),
        cached_cost_usd=float(pa.compute.sum(traj["cached_cost_usd"]).as_py() or 0.0),
    )


@flow(name="trajforge-run", log_prints=True)
def run_flow(config: RunConfig, dry_run: bool = False) -> dict[str, Any]:
    """Run (or resume) one configured run and return its summary. A dry run stops after
    validation; running the same config again later commits the staged batch."""
    logger = get_run_logger()
    started_wall = time.monotonic()
    run_dir = RunDir(config.out, config.run_id)
    if Lake.exists(config.out):
        with Lake.open(config.out, read_only=True) as lake:
            if lake.has_run(config.run_id):
                logger.info("run %s is already in the lake; nothing to do", config.run_id)
                return {"run_id": config.run_id, "status": "already_committed", "wall_s": 0.0}
    started = datetime.now(UTC)
    if run_dir.manifest().get("status") != "staged":
        run_dir.set_status("running", started_at=started.isoformat(), config=config.model_dump(mode="json"))
        specs = plan_tasks(config)
        stage_batch(config, specs, run_dir)
    else:
        logger.info("resuming run %s from its staged batch", config.run_id)
    tables, counts = validate(config, run_dir)
    _count(config, tables, counts)
    record = _run_record(config, tables, counts, started)
    summary = {
        "run_id": config.run_id,
        "status": "validated" if dry_run else "committed",
        "counts": dict(counts),
        "env_steps": record.env_steps,
    }
    if not dry_run:
        summary.update(commit(config, run_dir, tables, record))
    summary["wall_s"] = round(time.monotonic() - started_wall, 1)
    return summary
