"""The rollout pipeline: describe tasks, roll out every (task, policy, sample), verify, and
write Parquet to the run's staging folder. Thin DoFns around synthesizers/ and validators/.

Elements carry only names, seeds and options, never local paths or live objects, so the
same pipeline runs on a distributed runner by pipeline options alone.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Beam warns at import that Google Cloud clients are absent; they are not needed here.
logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("apitools not found"))

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from trajforge.environments import registry  # noqa: E402
from trajforge.environments.base import Environment, TaskSpec  # noqa: E402
from trajforge.schemas import arrow, ids  # noqa: E402
from trajforge.schemas.records import Failure, Task, Trajectory  # noqa: E402
from trajforge.synthesizers.policies import make_policy  # noqa: E402
from trajforge.synthesizers.rollout import rollout  # noqa: E402
from trajforge.validators.verifier import environment_verdict  # noqa: E402

FAILURES = "failures"
STAGED_TABLES = ("tasks", "trajectories", "failures")


class _EnvDoFn(beam.DoFn):
    """Holds one live environment per name for the life of the worker."""

    def __init__(self, env_options: dict[str, dict[str, Any]], run_id: str) -> None:
        self.env_options = env_options
        self.run_id = run_id
        self._envs: dict[str, Environment] = {}

    def setup(self) -> None:
        self._envs = {}

    def env(self, name: str) -> Environment:
        if name not in self._envs:
            self._envs[name] = registry.make(name, **self.env_options.get(name, {}))
        return self._envs[name]

    def discard(self, name: str) -> None:
        """After a crash the environment's state is unknown: start the next item afresh."""
        env = self._envs.pop(name, None)
        if env is not None:
            with contextlib.suppress(Exception):  # closing a broken environment may fail too
                env.close()

    def teardown(self) -> None:
        for name in list(self._envs):
            self.discard(name)

    def failure(self, item_id: str, task_id: str, stage: str, exc: BaseException) -> Any:
        return beam.pvalue.TaggedOutput(
            FAILURES,
            Failure(
                item_id=item_id,
                task_id=task_id,
                stage=stage,
                reason=type(exc).__name__,
                detail=("".join(traceback.format_exception_only(exc)).strip())[:1000],
                run_id=self.run_id,
            ).row(),
        )


class DescribeTask(_EnvDoFn):
    """Spec -> Task record, with the instruction the environment gives at reset."""

    def process(self, spec: dict[str, Any]) -> Iterator[Any]:
        tid = ids.task_id(spec["env"], spec["env_task"], spec["seed"])
        try:
            reset = self.env(spec["env"]).reset(TaskSpec(spec["env_task"], spec["seed"]))
        except Exception as exc:  # noqa: BLE001 - one task fails, not the run
            self.discard(spec["env"])
            yield self.failure(tid, tid, "describe", exc)
            return
        yield Task.make(
            spec["env"], spec["env_task"], spec["seed"], reset.instruction, run_id=self.run_id
        ).row()


class Rollout(_EnvDoFn):
    """(task, policy, sample) -> verified Trajectory record."""

    def __init__(self, env_options: dict[str, dict[str, Any]], run_id: str, settings: dict) -> None:
        super().__init__(env_options, run_id)
        self.settings = settings

    def process(self, item: tuple[dict, str, int]) -> Iterator[Any]:
        task, policy_spec, sample = item
        s = self.settings
        search_key = {"search": s["search"], "max_steps": s["max_steps"]}
        tid = ids.trajectory_id(task["task_id"], policy_spec, search_key, sample)
        try:
            episode = rollout(
                self.env(task["env"]),
                TaskSpec(task["env_task"], task["seed"], task["instruction"]),
                make_policy(policy_spec),
                seed=int(tid[:8], 16),
                max_steps=s["max_steps"],
                timeout_s=s["episode_timeout_s"],
            )
        except Exception as exc:  # noqa: BLE001 - one item fails, not the run
            self.discard(task["env"])
            yield self.failure(tid, task["task_id"], "rollout", exc)
            return
        record = Trajectory(
            trajectory_id=tid,
            task_id=task["task_id"],
            env=task["env"],
            instruction=episode.instruction,
            search=s["search"],
            policy=policy_spec,
            steps=episode.steps,
            num_steps=len(episode.steps),
            total_reward=episode.total_reward,
            success=episode.success,
            tokens_in=episode.tokens_in,
            tokens_out=episode.tokens_out,
            env_steps=episode.env_steps,
            wall_s=episode.wall_s,
            final_observation=episode.final_observation,
            stop_reason=episode.stop_reason,
            run_id=self.run_id,
        )
        yield environment_verdict(record.row())


def _write(pcoll: beam.PCollection, staging: Path, table: str) -> None:
    pcoll | f"Write {table}" >> beam.io.WriteToParquet(
        str(staging / table / "part"),
        schema=arrow.TABLES[table][0],
        file_name_suffix=".parquet",
        codec="zstd",
    )


def build(
    p: beam.Pipeline,
    specs: list[dict[str, Any]],
    *,
    staging: Path,
    run_id: str,
    env_options: dict[str, dict[str, Any]],
    policies: list[str],
    samples: int,
    settings: dict[str, Any],
) -> None:
    described = (
        p
        | "Specs" >> beam.Create(specs)
        | "Reshuffle specs" >> beam.Reshuffle()
        | "Describe" >> beam.ParDo(DescribeTask(env_options, run_id)).with_outputs(FAILURES, main="tasks")
    )
    work = (
        described.tasks
        | "Expand" >> beam.FlatMap(lambda t: [(t, pol, i) for pol in policies for i in range(samples)])
        | "Reshuffle work" >> beam.Reshuffle()
        | "Rollout"
        >> beam.ParDo(Rollout(env_options, run_id, settings)).with_outputs(FAILURES, main="trajectories")
    )
    _write(described.tasks, staging, "tasks")
    _write(work.trajectories, staging, "trajectories")
    _write((described.failures, work.failures) | "All failures" >> beam.Flatten(), staging, "failures")


def run(pipeline_options: list[str], **kwargs: Any) -> None:
    """Build and run the pipeline to completion; raises if the runner fails."""
    with beam.Pipeline(options=PipelineOptions(pipeline_options)) as p:
        build(p, **kwargs)
