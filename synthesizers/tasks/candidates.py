"""A synthesized candidate task, before and after verification, and its rows in the lake."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from trajforge.environments import goals
from trajforge.environments.goals import Goal
from trajforge.schemas import ids
from trajforge.schemas.kinds import TaskSource
from trajforge.schemas.records import Task, TaskCandidate

# Drop reasons, in the order the stages apply them (task_candidates.reason).
DROPS = (
    "slot_absent",  # a template slot the instance has no value for
    "no_phrasing",  # a changed fact whose kind has no phrasing (the coverage gap)
    "no_witness",  # nothing the exploration reached satisfies the goal
    "trivial",  # the goal holds at reset
    "unreplayable",  # the witness replayed in a fresh instance does not reach it
    "lost_state",  # the witness passes a state the environment calls lost
    "ambiguous",  # the text fits more than one goal on the instance
    "unfaithful",  # a slot value is missing from the text
    "duplicate_id",
    "duplicate_goal",  # one task per (instance, goal)
    "text_cap",  # too many tasks with the same normalized text across instances
    "near_duplicate",  # MinHash on word shingles
    "near_duplicate_embedding",  # MiniLM cosine, only when the goals match too
    "contaminated",  # matches the user's evaluation set
    "setup_failed",
)


@dataclass(frozen=True)
class Candidate:
    env: str
    base: str  # the environment's own env_task: the instance, with `seed`
    seed: int
    goal: Goal
    generator: str  # e.g. "explore:novelty", "template:under_price"
    source: TaskSource
    setup: tuple[str, ...] = ()
    witness: tuple[str, ...] = ()
    parent_task_id: str | None = None
    instruction: str = ""
    solve_rate: float | None = None
    attempts: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def env_task(self) -> str:
        return goals.format_env_task(self.base, self.goal, self.setup)

    @property
    def task_id(self) -> str:
        return ids.task_id(self.env, self.env_task, self.seed)

    @property
    def instance(self) -> tuple[str, str, int]:
        return (self.env, self.base, self.seed)

    def values(self) -> list[str]:
        return [v for fact in self.goal for v in fact[1:]]

    def but(self, **changes: Any) -> Candidate:
        return replace(self, **changes)

    def candidate_row(
        self, status: str, reason: str = "", detail: str = "", run_id: str | None = None
    ) -> dict:
        return TaskCandidate(
            candidate_id=ids.candidate_id(
                self.task_id, self.generator, self.instruction, self.parent_task_id
            ),
            task_id=self.task_id,
            env=self.env,
            env_task=self.env_task,
            seed=self.seed,
            instruction=self.instruction,
            goal=goals.goal_json(self.goal),
            setup=list(self.setup),
            witness=list(self.witness),
            generator=self.generator,
            source=self.source,
            parent_task_id=self.parent_task_id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            detail=detail[:500],
            run_id=run_id,
        ).row()

    def task_row(self, difficulty: str | None, run_id: str | None = None) -> dict:
        return Task(
            task_id=self.task_id,
            env=self.env,
            env_task=self.env_task,
            seed=self.seed,
            instruction=self.instruction,
            source=self.source,
            parent_task_id=self.parent_task_id,
            run_id=run_id,
            goal=goals.goal_json(self.goal),
            setup=list(self.setup),
            witness=list(self.witness),
            solve_rate=self.solve_rate,
            attempts=self.attempts,
            difficulty=difficulty,  # type: ignore[arg-type]
            generator=self.generator,
        ).row()
