"""A run that commits as it goes (`commit_every` tasks a step): each step is planned tasks
through the pipeline, validated and committed as its own snapshot, so the lake shows the run's
progress and a run killed at any moment loses at most the step in flight.

The lake is the truth of what is done: a step is done when its snapshot is in the lake (the
snapshot's note, `Lake.steps_of`, holds the step's counts). Started again with the same command,
a run skips the steps the lake has, commits a step whose batch is staged without running it
again, and re-runs a step that was in the pipeline (model answers come from the request cache).
The run row, with the counts of all steps, comes with the last commit. Steps hold whole tasks,
so each task's pairs are mined over all of its trajectories, as in a run of one batch; ids are
content-addressed, so the rows are those of an uninterrupted run.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from trajforge.flows import run as one_batch
from trajforge.flows import synthesized
from trajforge.flows.config import RunConfig
from trajforge.flows.progress import RunProgress
from trajforge.flows.staging import RunDir
from trajforge.pipelines import synthesis
from trajforge.store.lake import Lake


def step_bounds(tasks: int, every: int) -> list[tuple[int, int]]:
    """[start, end) of each step over the planned tasks, in plan order."""
    return [(start, min(start + every, tasks)) for start in range(0, tasks, every)]


@task(cache_policy=NO_CACHE, task_run_name="stage step {step}")
def stage_step(config: RunConfig, specs: list[dict[str, Any]], run_dir: RunDir, step: int) -> None:
    run_dir.clear_staging()  # a step killed in the pipeline left half of a batch: never mixed in
    run_dir.set_status("running", step=step)
    synthesis.run(
        config.pipeline_options, specs, one_batch.pipeline_spec(config, run_dir.run_id), run_dir.staging
    )
    run_dir.set_status("staged", step=step)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="commit step {step}")
def commit_step(config: RunConfig, run_dir: RunDir, step: int, of: int, counts: Counter) -> dict:
    tables = {name: run_dir.read_staged(name) for name in synthesis.STAGED_TABLES}
    note = {"step": step, "of": of, "counts": dict(counts)}
    with Lake.open(config.out, catalog=config.catalog) as lake:
        result = lake.commit(tables, {"run_id": config.run_id}, step=note)
    run_dir.set_status("committed_step", step=step, snapshot_id=result.snapshot_id)
    run_dir.clear_staging()
    return result.added


def _done_steps(config: RunConfig) -> dict[int, dict[str, Any]]:
    if not Lake.exists(config.out, config.catalog):
        return {}
    with Lake.open(config.out, read_only=True, catalog=config.catalog) as lake:
        return {int(n["step"]): n for n in lake.steps_of(config.run_id)}


def run_in_steps(config: RunConfig, run_dir: RunDir, every: int) -> dict[str, Any]:
    logger = get_run_logger()
    started_wall = time.monotonic()
    manifest = run_dir.manifest()
    if manifest.get("status") in (None, "committed") or "started_at" not in manifest:
        run_dir.set_status(
            "running", started_at=datetime.now(UTC).isoformat(), config=config.model_dump(mode="json")
        )
        specs = one_batch.plan_and_save(config, run_dir)
    else:
        specs = one_batch.saved_plan(config, run_dir)
    started = datetime.fromisoformat(run_dir.manifest()["started_at"])
    bounds = step_bounds(len(specs), every)
    done = _done_steps(config)
    policies = len(config.policies)
    progress = RunProgress(config.run_id, len(specs) * policies)
    if done:
        logger.info("run %s: %d of %d steps are in the lake already", config.run_id, len(done), len(bounds))
    added: Counter = Counter()
    try:
        for step, (start, end) in enumerate(bounds):
            if step in done:
                progress.already_done((end - start) * policies, done[step]["counts"])
                continue
            part = specs[start:end]
            manifest = run_dir.manifest()
            where = f"step {step + 1}/{len(bounds)}"
            if not (manifest.get("status") == "staged" and manifest.get("step") == step):
                progress.set_stage(f"{where}: pipeline ({end - start} tasks)")
                stage_step(config, part, run_dir, step)
            progress.set_stage(f"{where}: validating")
            counts = one_batch.validate(config, run_dir, part)
            progress.set_stage(f"{where}: committing")
            added.update(commit_step(config, run_dir, step, len(bounds), counts))
            done[step] = {"counts": dict(counts)}
            progress.step_done((end - start) * policies, dict(counts))
        progress.set_stage("committing the run row")
    finally:
        progress.close()
    total: Counter = Counter()
    for note in done.values():
        total.update(note["counts"])
    total.update(synthesized.counts(run_dir))
    record = one_batch.run_record(config, total, started)
    with Lake.open(config.out, catalog=config.catalog) as lake:  # with the synthesis' candidates
        result = lake.commit(synthesized.candidates(run_dir), record.row())
    run_dir.set_status("committed", snapshot_id=result.snapshot_id, steps=len(bounds))
    counts = {k: v for k, v in total.items() if not k.startswith("total:")}
    return {
        "run_id": config.run_id,
        "status": "committed",
        "counts": counts,
        "env_steps": record.env_steps,
        "snapshot_id": result.snapshot_id,
        "added": dict(added),
        "steps": len(bounds),
        "wall_s": round(time.monotonic() - started_wall, 1),
    }
