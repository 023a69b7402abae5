"""The Prefect flow of a whole run: plan tasks -> pipeline -> validate -> commit.

A run's id is its config fingerprint, so running the same config again resumes it: a run
already in the lake does nothing, a run whose batch is staged goes straight to validation, and
a run whose batch the gate refused for its failed items re-runs only those items (the finished
ones stay staged) and validates the whole batch again. One process at a time runs a run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from trajforge.environments import registry
from trajforge.flows import synthesized
from trajforge.flows.config import RunConfig, check_runnable, code_version
from trajforge.flows.progress import RunProgress
from trajforge.flows.staging import RunDir, write_json_atomic
from trajforge.pipelines import synthesis
from trajforge.pipelines.spec import PipelineSpec, planned_task
from trajforge.schemas import arrow
from trajforge.schemas.errors import ValidationFailed
from trajforge.schemas.records import RunRecord
from trajforge.store.lake import Lake
from trajforge.validators.dedup import Deduper
from trajforge.validators.expectations import Gate
from trajforge.validators.judge import agreement

# A validation chunk (what validation holds at once, whatever the size of the batch): at most
# this many rows, and about this many bytes of Arrow data (web observations make wide rows).
CHUNK_ROWS, CHUNK_BYTES = 4096, 16 * 2**20
SEARCH_STAGES = pa.array(["describe", "search"])  # the stages a retry of failed items runs again
Item = tuple[str, str]  # (task_id, policy)


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
        specs += [planned_task(env_spec.name, s.env_task, s.seed) for s in found]
    return specs


def _items(config: RunConfig, specs: list[dict[str, Any]]) -> list[Item]:
    """Every (task, policy) item of the run."""
    return [(s["task_id"], policy) for s in specs for policy in config.policies]


def _finished(run_dir: RunDir) -> set[Item]:
    """Items with at least one staged trajectory."""
    done: set[Item] = set()
    for batch in run_dir.iter_staged("trajectories", 65_536, columns=["task_id", "policy"]):
        done.update(zip(batch.column("task_id").to_pylist(), batch.column("policy").to_pylist(), strict=True))
    return done


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def stage_batch(config: RunConfig, specs: list[dict[str, Any]], run_dir: RunDir, attempt: int = 0) -> None:
    """Attempt 0 stages the whole run; attempt N > 0 re-runs the items without a trajectory
    into part-retryN files, next to the finished items of the earlier attempts."""
    retry: dict[str, Any] = {}
    if attempt == 0:
        run_dir.clear_staging()  # a half-written staging from a crash is never mixed in
        part = "part"
    else:
        part = f"part-retry{attempt}"
        run_dir.remove_parts(part)  # this attempt crashed half-way before
        only: dict[str, list[str]] = {}
        for tid, policy in sorted(set(_items(config, specs)) - _finished(run_dir)):
            only.setdefault(tid, []).append(policy)
        retried = pa.array(sorted(only), pa.string())
        # Their failures are superseded, their success/failure pairs re-mined over all their trajectories.
        run_dir.drop_staged_rows(  # not failed judgements: their trajectories stay
            "failures",
            lambda t: pc.and_(pc.is_in(t["task_id"], retried), pc.is_in(t["stage"], SEARCH_STAGES)),
        )
        run_dir.drop_staged_rows(
            "pairs",
            lambda t: pc.and_(pc.equal(t["source"], "trajectory"), pc.is_in(t["task_id"], retried)),
        )
        run_dir.drop_staged_rows(
            synthesis.COUNTS,
            lambda t: pc.and_(pc.equal(t["stage"], "pairs:trajectory"), pc.is_in(t["task_id"], retried)),
        )
        prior = [str(f) for f in run_dir.parts("trajectories")]
        specs = [s for s in specs if s["task_id"] in only]
        retry = {"only": only, "prior_trajectories": prior}
        if not only:  # nothing left to retry
            run_dir.set_status("staged", attempts=attempt)
            return
    run_dir.set_status("running", attempt=attempt)
    synthesis.run(
        config.pipeline_options, specs, pipeline_spec(config, run_dir.run_id, part, **retry), run_dir.staging
    )
    run_dir.set_status("staged", attempts=attempt + 1)


def pipeline_spec(config: RunConfig, run_id: str, part: str = "part", **retry: Any) -> PipelineSpec:
    """What the pipeline makes of this run; `retry`: `only` and `prior_trajectories`."""
    return PipelineSpec(
        run_id=run_id,
        policies=config.policies,
        settings=config.search_settings(),
        env_options={e.name: e.options for e in config.envs},
        concurrency=config.concurrency,
        pair_gap=config.mcts.pair_gap,
        keep_terminal_paths=config.mcts.keep_terminal_paths,
        max_trajectory_pairs=config.max_trajectory_pairs,
        model_options=config.model_options(),
        judge=config.judge,
        critique=config.critique,
        requests_in_flight=config.requests_in_flight,
        deadline_margin_s=config.deadline_margin_s,
        part=part,
        **retry,
    )


CACHED_USAGE = ("cached_tokens_in", "cached_tokens_out", "cached_cost_usd")


def _count(config: RunConfig, table: str, rows: list[dict[str, Any]], counts: Counter) -> None:
    """Add one chunk of deduplicated rows to the run's counts (and its totals, `total:*`)."""
    if table in ("tasks", "nodes"):
        counts[table] += len(rows)
    elif table == "pairs":
        counts.update(f"pairs:{r['source']}" for r in rows)
    elif table == "failures":
        counts.update(f"failed:{r['stage']}:{r['reason']}" for r in rows)
        counts["judge:failed"] += sum(1 for r in rows if r["stage"] == "judge")
    elif table == "trajectories":
        counts["trajectories"] += len(rows)
        counts["successes"] += sum(1 for t in rows if t["success"])
        if config.judge:
            counts.update(agreement(rows))
        for t in rows:
            counts[f"stop:{t['stop_reason']}"] += 1
            counts["model:calls"] += t["model_calls"] or 0
            counts["model:cached_calls"] += t["cached_calls"] or 0
            for col in ("tokens_in", "tokens_out", "env_steps", "cost_usd", *CACHED_USAGE):
                counts[f"total:{col}"] += t[col] or 0


def _count_drops(run_dir: RunDir, counts: Counter) -> None:
    """What the stages dropped, by reason (`dropped:pairs:below_gap`, ...), each unit of work
    counted once however often a bundle was replayed."""
    deduper = Deduper("count_id")
    for batch in run_dir.iter_staged(synthesis.COUNTS, 65_536):
        rows = batch.to_pylist()
        for row, keep in zip(rows, deduper.keep(rows), strict=True):
            if keep:
                counts[row["key"]] += row["n"]


def _refusal(report_path: str, counts: Counter, items: int, finished: int, share: float) -> ValidationFailed:
    failed = items - finished
    reasons = Counter({k.removeprefix("failed:"): v for k, v in counts.items() if k.startswith("failed:")})
    why = ", ".join(f"{reason} x{n}" for reason, n in reasons.most_common(3))
    if finished == 0:
        summary = f"the batch has no trajectories: all {items} (task, policy) items failed"
    else:
        summary = f"{failed}/{items} (task, policy) items failed, more than max_failed_share {share:g} allows"
    return ValidationFailed(
        summary + (f" ({why})" if why else ""),
        report_path,
        f"; run the same command again to retry the {failed} failed items",
    )


@task(cache_policy=NO_CACHE)
def validate(config: RunConfig, run_dir: RunDir, specs: list[dict[str, Any]]) -> Counter:
    """Dedupe re-emitted records and gate the batch on the expectation suites, streaming the
    staged tables chunk by chunk; then gate the share of failed items. Returns the counts."""
    gate = Gate(max_steps=config.max_steps, pair_gap=config.mcts.pair_gap)
    counts: Counter = Counter()
    finished: set[Item] = set()
    for name in synthesis.STAGED_TABLES:
        schema, key = arrow.TABLES[name]
        deduper = Deduper(key)
        empty = True
        for batch in run_dir.iter_staged(name, CHUNK_ROWS, batch_bytes=CHUNK_BYTES):
            empty = False
            rows = batch.to_pylist()
            if batch.schema.equals(schema, check_metadata=False):  # else the gate reports the drift
                keep = deduper.keep(rows)
                if not all(keep):
                    batch = batch.filter(pa.array(keep))
                    rows = [r for r, k in zip(rows, keep, strict=True) if k]
            gate.check(name, batch)
            _count(config, name, rows, counts)
            if name == "trajectories":
                finished.update((r["task_id"], r["policy"]) for r in rows)
        if empty:
            gate.check(name, schema.empty_table())
        gate.duplicates(name, key, deduper.cross_chunk)
        counts[f"dropped:duplicate_emission:{name}"] += deduper.dropped
    _count_drops(run_dir, counts)
    items = _items(config, specs)
    gate.completeness([item in finished for item in items], config.max_failed_share)
    report = gate.report()
    write_json_atomic(run_dir.report, report.to_dict())
    if not report.success:
        incomplete = all(o.table == "items" for o in report.failed)
        if incomplete:  # the same command retries the failed items; else it restages the batch
            done = sum(1 for item in items if item in finished)
            refusal = _refusal(str(run_dir.report), counts, len(items), done, config.max_failed_share)
        else:
            refusal = ValidationFailed(report.summary(), str(run_dir.report))
        run_dir.set_status(
            "validation_failed", summary=refusal.summary, retry="failed_items" if incomplete else "all"
        )
        raise refusal
    return counts


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def commit(config: RunConfig, run_dir: RunDir, record: RunRecord) -> dict:
    """Commit the validated batch; the lake adds only ids it lacks, the first staged row of an id
    winning, as in dedup."""
    tables = {name: run_dir.read_staged(name) for name in synthesis.STAGED_TABLES}
    tables |= synthesized.candidates(run_dir)
    with Lake.open(config.out, catalog=config.catalog) as lake:
        result = lake.commit(tables, record.row())
    run_dir.set_status("committed", snapshot_id=result.snapshot_id, added=result.added)
    run_dir.clear_staging()
    return {"snapshot_id": result.snapshot_id, "added": result.added}


def run_record(config: RunConfig, counts: Counter, started: datetime) -> RunRecord:
    total = {k.removeprefix("total:"): counts.pop(k) for k in [k for k in counts if k.startswith("total:")]}
    return RunRecord(
        run_id=config.run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        status="committed",
        config_json=config.model_dump_json(),
        config_hash=config.config_hash,
        code_version=code_version(),
        counts={k: v for k, v in counts.items() if v},
        tokens_in=int(total.get("tokens_in", 0)),
        tokens_out=int(total.get("tokens_out", 0)),
        cost_usd=float(total.get("cost_usd", 0.0)),
        env_steps=int(total.get("env_steps", 0)),
        cached_tokens_in=int(total.get("cached_tokens_in", 0)),
        cached_tokens_out=int(total.get("cached_tokens_out", 0)),
        cached_cost_usd=float(total.get("cached_cost_usd", 0.0)),
    )


@task(cache_policy=NO_CACHE)
def synthesize_tasks(config: RunConfig, run_dir: RunDir) -> list[dict[str, Any]]:
    """A `synthesis:` run's tasks: synthesized and verified (or the lake's), see flows.synthesized."""
    return synthesized.plan(config, run_dir)


def plan_and_save(config: RunConfig, run_dir: RunDir) -> list[dict[str, Any]]:
    """Plan the run's tasks (building any assets) and record the plan in the run folder. A run's
    synthesis is done once: planned again (a retry), it keeps the tasks it synthesized."""
    if config.synthesis is None:
        specs = plan_tasks(config)
    elif synthesized.planned_before(run_dir):
        return saved_plan(config, run_dir)
    else:
        specs = synthesize_tasks(config, run_dir)
    write_json_atomic(run_dir.plan_path, specs)
    return specs


def saved_plan(config: RunConfig, run_dir: RunDir) -> list[dict[str, Any]]:
    try:
        saved = json.loads(run_dir.plan_path.read_text())
    except (OSError, ValueError):
        return plan_and_save(config, run_dir)
    return [
        planned_task(s["env"], s["env_task"], s["seed"], s.get("task")) for s in saved
    ]  # plans of older versions had no ids


@flow(name="trajforge-run", log_prints=True)
def run_flow(config: RunConfig, dry_run: bool = False) -> dict[str, Any]:
    """Run (or resume) one configured run and return its summary. A dry run stops after
    validation; running the same config again later commits the staged batch. Raises RunLocked
    while another process runs the same run in the same folder, ConfigError when this machine
    lacks what the run needs (see `check_runnable`)."""
    check_runnable(config)
    run_dir = RunDir(config.out, config.run_id)
    with run_dir.lock():
        run_dir.begin_attempt()
        try:
            summary = _run(config, run_dir, dry_run)
        except Exception as exc:
            run_dir.end_attempt(f"failed: {type(exc).__name__}")
            raise
        run_dir.end_attempt(summary["status"])
        return summary


def _run(config: RunConfig, run_dir: RunDir, dry_run: bool) -> dict[str, Any]:
    logger = get_run_logger()
    started_wall = time.monotonic()
    if Lake.exists(config.out, config.catalog):
        with Lake.open(config.out, read_only=True, catalog=config.catalog) as lake:
            if lake.has_run(config.run_id):
                run_dir.clear_staging()  # left by a crash between the commit and its cleanup
                logger.info("run %s is already in the lake; nothing to do", config.run_id)
                return {"run_id": config.run_id, "status": "already_committed", "wall_s": 0.0}
    if config.commit_every and not dry_run:  # commits as it goes: see flows.steps
        from trajforge.flows.steps import run_in_steps

        return run_in_steps(config, run_dir, config.commit_every)
    started = datetime.now(UTC)
    manifest = run_dir.manifest()
    status, attempts = manifest.get("status"), manifest.get("attempts", 0)
    if status == "staged":
        logger.info("resuming run %s from its staged batch", config.run_id)
        specs = saved_plan(config, run_dir)
    elif attempts and (
        (status == "validation_failed" and manifest.get("retry") == "failed_items")
        or (status == "running" and manifest.get("attempt", 0) > 0)  # a retry that crashed
    ):
        logger.info("run %s: retrying the items that failed", config.run_id)
        specs = plan_and_save(config, run_dir)
        stage_batch(config, specs, run_dir, attempt=attempts)
    else:
        run_dir.set_status(
            "running",
            started_at=started.isoformat(),
            config=config.model_dump(mode="json"),
            attempts=0,
            retry=None,
            summary=None,
        )
        specs = plan_and_save(config, run_dir)
        stage_batch(config, specs, run_dir)
    progress = RunProgress(config.run_id, len(_items(config, specs)))
    progress.set_stage("validating")
    counts = validate(config, run_dir, specs)
    counts.update(synthesized.counts(run_dir))
    progress.step_done(len(_items(config, specs)), dict(counts))
    progress.set_stage("committing" if not dry_run else "validated (dry run)")
    progress.close()
    record = run_record(config, counts, started)
    summary = {
        "run_id": config.run_id,
        "status": "validated" if dry_run else "committed",
        "counts": dict(counts),
        "env_steps": record.env_steps,
    }
    if not dry_run:
        summary.update(commit(config, run_dir, record))
    summary["wall_s"] = round(time.monotonic() - started_wall, 1)
    return summary
