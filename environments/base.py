"""The Environment protocol that every adapter speaks, and what its calls return.

An adapter is a class constructed with keyword options (from the run config) that
implements the methods below. `snapshot`/`restore` and `walkthrough` are optional:
callers check `supports_snapshot` and get `None` from `walkthrough()` when there is none.
Also optional: `prepare(specs, workers)` (build assets once before a run) and a class
attribute `run_defaults` (run settings, such as `max_steps` or `mcts`, for a run of this
environment alone wherever the config and the flags say nothing). Also optional: `tools`, a list
of tools in OpenAI's function-calling format; an environment that declares them takes actions
that are calls (schemas.toolcalls.encode_call) and checks them with environments.tools.check_call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Part of the adapter protocol: adapters raise these two from here (see the README).
from trajforge.schemas.errors import ConfigError, EnvironmentFailure

__all__ = ["ConfigError", "Environment", "EnvironmentFailure", "Reset", "StepOutcome", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    """What an environment needs to start an episode: a task name within it and a seed."""

    env_task: str
    seed: int
    instruction: str = ""


@dataclass
class Reset:
    observation: str
    instruction: str
    info: dict[str, Any] = field(default_factory=dict)  # e.g. "screenshot": PNG bytes


@dataclass
class StepOutcome:
    observation: str
    reward: float
    done: bool
    success: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    name: str
    supports_snapshot: bool

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        """n environment-native tasks, deterministic for the seed."""

    def reset(self, task: TaskSpec) -> Reset: ...

    def admissible_actions(self) -> list[str]: ...

    def step(self, action: str) -> StepOutcome: ...

    def walkthrough(self) -> list[str] | None:
        """Actions that solve the task from the current state, when the environment knows."""

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...

    def close(self) -> None: ...
