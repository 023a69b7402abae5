"""Pydantic records of the data contract (see DESIGN.md): each table's columns are declared here
once, in order; schemas.arrow derives the Arrow schemas from them. Rows go to Arrow via `.row()`."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from trajforge.schemas import ids
from trajforge.schemas.errors import reason_code
from trajforge.schemas.kinds import CandidateStatus, Difficulty, PairSource, SearchMethod, TaskSource

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stored:
    """A column's Arrow type where its Python type does not say it (read by schemas.arrow)."""

    arrow_type: str  # the name of a pyarrow type factory, e.g. "int32"


Int32 = Annotated[int, Stored("int32")]  # an index or count stored in 32 bits


def utcnow() -> datetime:
    return datetime.now(UTC)


class Record(BaseModel):
    """A row of the lake. A table's record names its table and primary key (`table`, `key`)."""

    model_config = ConfigDict(extra="forbid")

    def row(self) -> dict:
        return self.model_dump(mode="python")


class Task(Record):
    table: ClassVar[str] = "tasks"
    key: ClassVar[str] = "task_id"

    task_id: str
    env: str
    env_task: str
    seed: int
    instruction: str
    source: TaskSource = "env"
    parent_task_id: str | None = None
    run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # Synthesized tasks only (null for the environment's own): see synthesizers/tasks.
    goal: str | None = None  # canonical JSON of the goal's facts, e.g. [["in_cart","red kettle"]]
    setup: list[str] | None = None  # actions replayed silently at reset
    witness: list[str] | None = None  # actions that reached the goal from the setup's end
    solve_rate: float | None = None  # the configured search's success share from a fresh reset
    attempts: int | None = None  # how many searches solve_rate rests on
    difficulty: Difficulty | None = None
    generator: str | None = None  # e.g. "explore:novelty", "template:under_price"

    @classmethod
    def make(cls, env: str, env_task: str, seed: int, instruction: str, **kw) -> Task:
        return cls(
            task_id=ids.task_id(env, env_task, seed),
            env=env,
            env_task=env_task,
            seed=seed,
            instruction=instruction,
            **kw,
        )


class TaskCandidate(Record):
    """Every synthesized candidate, kept or dropped with its reason: "what was dropped and why"."""

    table: ClassVar[str] = "task_candidates"
    key: ClassVar[str] = "candidate_id"

    candidate_id: str
    task_id: str
    env: str
    env_task: str
    seed: int
    instruction: str
    goal: str
    setup: list[str] = Field(default_factory=list)
    witness: list[str] = Field(default_factory=list)
    generator: str
    source: TaskSource
    parent_task_id: str | None = None
    status: CandidateStatus
    reason: str = ""  # the drop reason (trivial, unreplayable, ...); "" when kept
    detail: str = ""
    run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Step(Record):
    index: Int32
    observation: str
    action: str
    thought: str | None = None
    reward: float = 0.0
    done: bool = False
    value: float | None = None  # the search's estimate of this action's return (PRM data)
    # When the action is a tool call (schemas.toolcalls): its name, arguments (JSON) and result.
    tool_name: str | None = None
    tool_arguments: str | None = None
    tool_result: str | None = None
    # The actions the agent could choose from at this step: its prompt lists them (conversation.user_text).
    admissible: list[str] | None = None


class Trajectory(Record):
    table: ClassVar[str] = "trajectories"
    key: ClassVar[str] = "trajectory_id"

    trajectory_id: str
    task_id: str
    env: str
    instruction: str
    search: SearchMethod
    policy: str
    steps: list[Step]
    num_steps: Int32
    total_reward: float
    success: bool | None
    verifier_score: float | None = None
    verifier_verdict: str | None = None
    critique: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cached_calls: int = 0  # answered from the request cache (e.g. on a resumed run): not paid again
    env_steps: int = 0
    wall_s: float = 0.0
    final_observation: str = ""
    stop_reason: str = ""
    run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    cached_tokens_in: int = 0  # tokens of the cached answers (tokens_in/out/cost_usd: paid now)
    cached_tokens_out: int = 0
    cached_cost_usd: float = 0.0  # what the cached answers cost when they were paid
    tools: str | None = None  # the tools the environment declared (JSON, OpenAI's function format)


class Pair(Record):
    """A preference between two continuations of the same conversation prefix (JSON messages)."""

    table: ClassVar[str] = "pairs"
    key: ClassVar[str] = "pair_id"

    pair_id: str
    task_id: str
    step_index: Int32
    prefix: str
    chosen: str
    rejected: str
    q_chosen: float | None
    q_rejected: float | None
    source: PairSource
    run_id: str | None = None
    policy: str | None = None  # the policy whose search tree gave an mcts_sibling pair


class TreeNode(Record):
    table: ClassVar[str] = "nodes"
    key: ClassVar[str] = "node_id"

    node_id: str
    task_id: str
    parent_id: str | None
    depth: Int32
    action: str | None
    visits: int
    value: float
    prior: float
    reward: float
    terminal: bool
    run_id: str | None = None
    critic: float | None = None  # the critic's value of the action (MCTS with AI feedback)


class Artifact(Record):
    """A screenshot or page capture of a step: stored beside trajectories, never inline."""

    table: ClassVar[str] = "artifacts"
    key: ClassVar[str] = "artifact_id"

    artifact_id: str
    trajectory_id: str
    step_index: Int32
    kind: str
    mime: str
    data: bytes

    @classmethod
    def make(cls, trajectory_id: str, step_index: int, kind: str, mime: str, data: bytes) -> Artifact:
        return cls(
            artifact_id=ids.artifact_id(trajectory_id, step_index, kind),
            trajectory_id=trajectory_id,
            step_index=step_index,
            kind=kind,
            mime=mime,
            data=data,
        )


class Failure(Record):
    """An item that failed (an environment crash, a timeout): recorded, never fatal to the run."""

    table: ClassVar[str] = "failures"
    key: ClassVar[str] = "item_id"

    item_id: str
    task_id: str
    stage: str
    reason: str  # a code (see reason_code), counted in runs.counts as failed:<stage>:<reason>
    detail: str = ""
    run_id: str | None = None

    @classmethod
    def of(cls, exc: BaseException, *, item_id: str, task_id: str, stage: str, run_id: str | None) -> Failure:
        detail = "".join(traceback.format_exception_only(exc)).strip()[:1000]
        return cls(
            item_id=item_id,
            task_id=task_id,
            stage=stage,
            reason=reason_code(exc),
            detail=detail,
            run_id=run_id,
        )


class RunRecord(Record):
    table: ClassVar[str] = "runs"
    key: ClassVar[str] = "run_id"

    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str
    config_json: str
    config_hash: str
    code_version: str
    counts: dict[str, int] = Field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    env_steps: int = 0
    snapshot_id: int | None = None
    cached_tokens_in: int = 0  # usage answered from the request cache: paid by an earlier attempt
    cached_tokens_out: int = 0
    cached_cost_usd: float = 0.0
