"""What the synthesis pipeline is asked to make: one frozen, picklable value that the flow
builds from the run config and every DoFn carries (plain data, no live objects or local
paths, so it travels to the workers of a distributed runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trajforge.schemas import ids
from trajforge.synthesizers.search import SearchSettings

# A search's deadline: its wall budget, 10% more, and a margin for the step it was in when the
# budget ran out (the search checks the clock between steps), `deadline_margin_s` of the run.
DEADLINE_FACTOR = 1.1
DEADLINE_MARGIN_S = 30.0


@dataclass(frozen=True)
class PipelineSpec:
    run_id: str
    policies: list[str]
    settings: SearchSettings
    env_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    concurrency: int = 1  # searches in flight per worker
    pair_gap: float = 0.1
    keep_terminal_paths: bool = False
    max_trajectory_pairs: int = 4
    model_options: dict[str, Any] = field(default_factory=dict)  # of model policies and the judge
    judge: str | None = None
    critique: bool = False
    requests_in_flight: int = 64  # judge requests per worker
    deadline_margin_s: float = DEADLINE_MARGIN_S
    # A retry of a run's failed items: task id -> the policies to search again (the task specs
    # then hold only their tasks); the run's staged trajectory files, so each retried task's pairs
    # are mined over all its trajectories; the prefix of this attempt's files.
    only: dict[str, list[str]] | None = None
    prior_trajectories: list[str] = field(default_factory=list)
    part: str = "part"

    def policies_of(self, task_id: str) -> list[str]:
        return self.policies if self.only is None else self.only.get(task_id, [])

    @property
    def search_deadline_s(self) -> float:
        return search_deadline_s(self.settings.budget.wall_s, self.deadline_margin_s)


def search_deadline_s(wall_s: float, margin_s: float = DEADLINE_MARGIN_S) -> float:
    return wall_s * DEADLINE_FACTOR + margin_s


def planned_task(env: str, env_task: str, seed: int, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """A task as planned, before any pipeline runs: its id is minted here (the Task record the
    pipeline makes of it carries the same id), so a flow knows every task's id up front.
    `task`: a synthesized task's own fields (instruction, goal, setup, witness, generator, ...)."""
    spec = {"task_id": ids.task_id(env, env_task, seed), "env": env, "env_task": env_task, "seed": seed}
    return spec | ({"task": task} if task else {})
