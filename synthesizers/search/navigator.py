"""Stepping an environment along action prefixes for a search that branches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trajforge.environments.base import Environment, Reset, StepOutcome, TaskSpec
from trajforge.inference.context import shorten
from trajforge.synthesizers.search.settings import MAX_OBSERVATION_CHARS, Branching


class BudgetSpent(Exception):
    """Raised inside a simulation when the environment-step budget runs out."""


@dataclass
class Visit:
    """What the environment showed at the end of an action prefix."""

    observation: str
    reward: float
    done: bool
    success: bool | None
    admissible: list[str]
    state: Any = None  # the environment's snapshot, in snapshot branching
    screenshot: bytes | None = None


class Navigator:
    """Answers "what happens after this prefix and this action?", stepping the environment
    only for prefixes never seen before: every visited prefix is cached, so no prefix is
    stepped twice. To step from a prefix, it restores the prefix's snapshot when it can,
    otherwise replays the prefix from reset. Every real environment step is counted."""

    def __init__(
        self,
        env: Environment,
        task: TaskSpec,
        branching: Branching,
        step_budget: int,
        max_observation_chars: int = MAX_OBSERVATION_CHARS,
    ) -> None:
        use_snapshot = branching == "snapshot" or (branching == "auto" and env.supports_snapshot)
        if branching == "snapshot" and not env.supports_snapshot:
            raise ValueError(f"branching: {env.name} has no snapshot/restore; use replay or auto")
        self.env, self.task, self.snapshots = env, task, use_snapshot
        self.step_budget = step_budget
        self.max_observation_chars = max_observation_chars
        self.env_steps = 0
        self.cache: dict[tuple[str, ...], Visit] = {}
        self._at: tuple[str, ...] | None = None  # the prefix the environment is at, if known

    def root(self) -> tuple[Reset, Visit]:
        reset = self._reset()
        visit = Visit(
            shorten(reset.observation, self.max_observation_chars),
            0.0,
            False,
            None,
            self.env.admissible_actions(),
            self._snapshot(),
            reset.info.get("screenshot"),
        )
        self.cache[()] = visit
        return reset, visit

    def visit(self, prefix: tuple[str, ...], action: str) -> Visit:
        path = (*prefix, action)
        if path in self.cache:
            return self.cache[path]
        self.goto(prefix)
        outcome = self._step(action)
        self._at = path
        admissible = [] if outcome.done else self.env.admissible_actions()
        visit = Visit(
            shorten(outcome.observation, self.max_observation_chars),
            outcome.reward,
            outcome.done,
            outcome.success,
            admissible,
            self._snapshot(),
            outcome.info.get("screenshot"),
        )
        self.cache[path] = visit
        return visit

    def goto(self, path: tuple[str, ...]) -> None:
        """Put the environment itself at the end of a prefix it has visited."""
        if self._at == path:
            return
        if self.snapshots:
            self.env.restore(self.cache[path].state)
            self._at = path
            return
        at = self._at
        if at is None or path[: len(at)] != at:
            self._reset()
            at = ()
        for i, action in enumerate(path[len(at) :], start=len(at) + 1):
            self._step(action)
            self._at = path[:i]

    def _snapshot(self) -> Any:
        return self.env.snapshot() if self.snapshots else None

    def _reset(self) -> Reset:
        reset = self.env.reset(self.task)
        self._at = ()
        return reset

    def _step(self, action: str) -> StepOutcome:
        if self.env_steps >= self.step_budget:
            raise BudgetSpent
        self.env_steps += 1
        self._at = None  # unknown until the caller says where the step led
        return self.env.step(action)
