"""The goal contract: a goal is a conjunction of typed predicates over an environment's state.

An environment speaks it through optional hooks (plugins may implement them too):

    predicate_kinds() -> list[PredicateKind]   the kinds a goal may use, each with >= 2 phrasings
    facts() -> frozenset[Fact]                 what holds now (facts of kinds without phrasings too)
    slot_values() -> dict[str, list[str]]      the instance's values of each slot type
    typeable_values() -> list[str]             texts the agent can type (catalogue, names, emails)
    free_play(on: bool)                        (optional) stop judging the base task: the goal judges
    goal_templates() -> dict[str, Template]    (optional) goal forms filled from the instance
    vocabulary() -> dict[str, list[str]]       (optional) slot values of the environment type at large
    location() -> str                          (optional) where the agent is (a page), beside the facts

A fact is a tuple (kind, value, ...); the checker of a goal is "each of its facts holds"
(`goal_holds`). A synthesized task's env_task is `goal:` + canonical JSON of its base task, goal
and setup prefix, so its task id stays content-addressed: the same goal on the same instance is
the same task. `GoalEnvironment` wraps an environment and runs such tasks: it resets the base
task, replays the setup silently and judges success by the goal; other env_tasks pass through.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trajforge.environments.base import EnvironmentFailure, Reset, StepOutcome, TaskSpec
from trajforge.schemas.ids import canonical_json

Fact = tuple[str, ...]
Goal = tuple[Fact, ...]
GOAL_PREFIX = "goal:"
HOOKS = ("predicate_kinds", "facts", "slot_values", "typeable_values")


@dataclass(frozen=True)
class PredicateKind:
    """A predicate with typed slots and phrasings ("Put the {0} in the {1}.")."""

    name: str
    slots: tuple[str, ...]  # slot types, e.g. ("food",), ("product", "quantity")
    phrasings: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.phrasings) < 2:
            raise ValueError(f"predicate {self.name}: give at least two phrasings")

    def phrase(self, fact: Fact, index: int) -> str:
        return self.phrasings[index % len(self.phrasings)].format(*fact[1:])


class SlotAbsent(Exception):
    """A template slot the instance holds no value for (a counted drop, never a random fill)."""


# A goal template: the current instance's facts of one goal form, drawing among its values.
Template = Callable[[random.Random], list[Fact]]


@dataclass(frozen=True)
class GoalTask:
    base: str  # the environment's own env_task
    goal: Goal
    setup: tuple[str, ...] = ()


def canonical_goal(facts: Iterable[Sequence[str]]) -> Goal:
    return tuple(sorted({tuple(str(v) for v in f) for f in facts}))


def goal_json(goal: Goal) -> str:
    return canonical_json([list(f) for f in goal])


def format_env_task(base: str, goal: Iterable[Sequence[str]], setup: Sequence[str] = ()) -> str:
    g = canonical_goal(goal)
    return GOAL_PREFIX + canonical_json({"base": base, "goal": [list(f) for f in g], "setup": list(setup)})


def parse_env_task(env_task: str) -> GoalTask | None:
    """The goal task an env_task encodes, None for an environment's own env_task."""
    if not env_task.startswith(GOAL_PREFIX):
        return None
    try:
        data = json.loads(env_task[len(GOAL_PREFIX) :])
        return GoalTask(str(data["base"]), canonical_goal(data["goal"]), tuple(map(str, data["setup"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvironmentFailure(f"env_task: malformed goal task {env_task[:80]!r}: {exc}") from exc


def supports_goals(env: Any) -> bool:
    return all(callable(getattr(env, hook, None)) for hook in HOOKS)


def kinds_of(env: Any) -> dict[str, PredicateKind]:
    return {k.name: k for k in env.predicate_kinds()}


def goal_holds(env: Any, goal: Goal) -> bool:
    """The checker: every fact of the (non-empty) goal holds in the environment's state now."""
    return bool(goal) and set(goal) <= env.facts()


def phrasing_index(env_task: str, i: int) -> int:
    """Which phrasing the i-th fact of a task gets: fixed by the task's content, so any worker
    renders the same instruction."""
    return int(hashlib.sha256(f"{env_task}#{i}".encode()).hexdigest()[:8], 16)


def render(kinds: dict[str, PredicateKind], goal: Goal, env_task: str) -> str | None:
    """The instruction of a goal, None when one of its kinds has no phrasing (the coverage gap)."""
    parts = []
    for i, fact in enumerate(goal):
        kind = kinds.get(fact[0])
        if kind is None or len(kind.slots) != len(fact) - 1:
            return None
        parts.append(kind.phrase(fact, phrasing_index(env_task, i)).rstrip("."))
    if not parts:
        return None
    text = (
        parts[0]
        if len(parts) == 1
        else ", ".join(parts[:-1]) + " and " + parts[-1][0].lower() + parts[-1][1:]
    )
    return text + "."


class GoalEnvironment:
    """An environment that also runs goal tasks (see the module's docstring); everything else is
    the wrapped environment's. A goal of () is free play: nothing ends the episode but the
    environment itself (exploration)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.goal_task: GoalTask | None = None
        self.lost = False  # the episode reached a state the environment calls lost

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, task: TaskSpec) -> Reset:
        gt = parse_env_task(task.env_task)
        self.goal_task, self.lost = gt, False
        free = getattr(self.env, "free_play", None)
        if gt is None:
            if free is not None:
                free(False)
            return self.env.reset(task)
        if free is not None:
            free(True)
        reset = self.env.reset(TaskSpec(gt.base, task.seed))
        observation = reset.observation
        for action in gt.setup:
            if action not in self.env.admissible_actions():
                raise EnvironmentFailure(f"setup action {action!r} is not admissible", reason="setup_failed")
            outcome = self.env.step(action)
            if outcome.done:
                raise EnvironmentFailure(f"setup action {action!r} ended the episode", reason="setup_failed")
            observation = outcome.observation
        instruction = task.instruction or render(kinds_of(self.env), gt.goal, task.env_task) or ""
        return Reset(observation, instruction, reset.info)

    def step(self, action: str) -> StepOutcome:
        outcome = self.env.step(action)
        if self.goal_task is None:
            return outcome
        if outcome.done and outcome.success is False:
            self.lost = True
        if not self.goal_task.goal:  # free play
            return outcome
        if goal_holds(self.env, self.goal_task.goal):
            return StepOutcome(outcome.observation, 1.0, True, True, {**outcome.info, "checker": "goal"})
        return StepOutcome(
            outcome.observation, 0.0, outcome.done, False if outcome.done else None, outcome.info
        )

    def walkthrough(self) -> list[str] | None:
        return self.env.walkthrough() if self.goal_task is None else None

    def close(self) -> None:
        self.env.close()


def wrap(env: Any) -> Any:
    """`env` able to run goal tasks when it speaks the goal contract, else `env` itself."""
    return GoalEnvironment(env) if supports_goals(env) and not isinstance(env, GoalEnvironment) else env
