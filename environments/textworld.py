"""TextWorld text games (the tw-cooking challenge or custom games) behind the Environment protocol.

A task's `env_task` names its game completely, so any worker (on any machine) can regenerate it;
the grammar and the game cache are textworld_games.py's.

Snapshots save the Z-machine state plus the state tracker's bookkeeping (~1 ms) instead of
`env.copy()` (~150 ms). That reaches into the wrapper chain of textworld 1.7.0 (pinned), and
tests/environments/test_textworld.py checks that a restored branch still wins.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge.environments import tw_goals
from trajforge.environments.base import (
    ConfigError,
    EnvironmentFailure,
    Reset,
    StepOutcome,
    TaskSpec,
)
from trajforge.environments.textworld_games import (
    DEFAULT_OPTIONS,
    cache_root,
    check_challenge,
    ensure_game,
    ensure_games,
    format_env_task,
    full_settings,
    parse_env_task,
)

log = logging.getLogger(__name__)

# Interpreter meta commands desynchronise TextWorld's state tracker (restart, quit, ...).
_META_VERBS = frozenset(
    {
        "quit",
        "q",
        "restart",
        "save",
        "restore",
        "undo",
        "script",
        "unscript",
        "transcript",
        "noscript",
    }
)
_META_REPLY = "That command is not available in this game."
_BANNER_CHARS = set(" _|\\$/<>")


# ---- the environment ----------------------------------------------------------------------


def clean_feedback(text: str) -> str:
    """Game text without the ASCII-art banner, prompt/status lines and padding."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(">") or (line and set(line) <= _BANNER_CHARS):
            continue
        if line.startswith("Would you like to RESTART, RESTORE"):
            continue
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _request_infos() -> Any:
    from textworld import EnvInfos

    return EnvInfos(
        objective=True,
        admissible_commands=True,
        score=True,
        max_score=True,
        won=True,
        lost=True,
        policy_commands=True,
        facts=True,  # the goal contract (environments.tw_goals)
    )


@dataclass(frozen=True)
class _Snapshot:
    env_task: str
    vm: tuple[Any, ...]  # Jericho get_state()
    state: dict[str, Any]  # the GameState every wrapper holds after the last step
    prev_state: Any  # Inform7Data carries score/moves over from it
    progression: Any  # GameProgression (copied again at each restore)
    last_action: Any
    previous_policy: list[Any] | None
    current_policy: list[Any] | None
    moves: int


class TextWorldEnvironment:
    name = "textworld"
    supports_snapshot = True

    def __init__(
        self,
        challenge: str = "tw-cooking",
        options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.challenge = check_challenge(challenge)
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"options: {options!r} must be a mapping, e.g. {{'recipe': 1}}")
        self.options = dict(options or {})
        given = {**DEFAULT_OPTIONS[challenge], **self.options}
        self.settings = full_settings(challenge, given, "options")
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise ConfigError(f"cache_dir: {cache_dir!r} must be a directory path or null")
        self.cache_dir = cache_dir
        if cache_root(cache_dir).exists() and not cache_root(cache_dir).is_dir():
            raise ConfigError(f"cache_dir: {cache_dir!r} is not a directory; pass a directory")
        self._env: Any = None
        self._env_task: str | None = None
        self._state: Any = None  # the last GameState

    # Pickles as its configuration (a Beam DoFn may carry it); the game restarts at reset.
    def __getstate__(self) -> dict[str, Any]:
        return {"challenge": self.challenge, "options": self.options, "cache_dir": self.cache_dir}

    def __setstate__(self, config: dict[str, Any]) -> None:
        self.__init__(**config)  # type: ignore[misc]

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        if n < 0:
            raise ConfigError(f"tasks: n={n} is negative; ask for 0 or more tasks")
        seeds = random.Random(seed).sample(range(2**31), n)  # distinct games
        return [TaskSpec(format_env_task(self.challenge, self.settings, s), seed=s) for s in seeds]

    def prepare(self, specs: list[TaskSpec], workers: int = 2) -> None:
        """Build the missing games of a run up front, in parallel, before rollouts fan out."""
        ensure_games([s.env_task for s in specs], self.cache_dir, workers=workers)

    def reset(self, task: TaskSpec) -> Reset:
        path = ensure_game(task.env_task, self.cache_dir)
        try:
            if task.env_task != self._env_task:
                self._start(path, task.env_task)
            self._state = self._env.reset()
        except Exception as exc:
            raise EnvironmentFailure(f"textworld: reset of {task.env_task!r} failed: {exc}") from exc
        return Reset(clean_feedback(self._state.feedback), self._state.objective or "")

    def _start(self, path: Path, env_task: str) -> None:
        import textworld

        self.close()
        self._env = textworld.start(str(path), request_infos=_request_infos())
        self._env_task = env_task

    def _current(self) -> Any:
        if self._state is None:
            raise EnvironmentFailure("textworld: no game is running; call reset(task) first")
        return self._state

    def _done(self) -> bool:
        return bool(self._current().get("done"))

    def admissible_actions(self) -> list[str]:
        return [] if self._done() else list(self._current().admissible_commands or [])

    def step(self, action: str) -> StepOutcome:
        before = self._current()
        if self._done():  # the interpreter would keep going after the end: freeze instead
            return self._outcome("The game is over.", before, before)
        command = " ".join(action.split())
        if command.split(" ")[0].lower() in _META_VERBS:
            return self._outcome(_META_REPLY, before, before)
        try:
            self._state, _, _ = self._env.step(command)
        except Exception as exc:
            raise EnvironmentFailure(
                f"textworld: step {action!r} failed in {self._env_task!r}: {exc}"
            ) from exc
        return self._outcome(clean_feedback(self._state.feedback), before, self._state)

    @staticmethod
    def _outcome(observation: str, before: Any, after: Any) -> StepOutcome:
        max_score = after.max_score or 0
        delta = (after.score or 0) - (before.score or 0)
        reward = delta / max_score if max_score else 0.0
        success = True if after.won else False if after.lost else None
        info = {"score": after.score, "max_score": max_score}
        return StepOutcome(observation, reward, bool(after.get("done")), success, info)

    def walkthrough(self) -> list[str] | None:
        return [] if self._done() else list(self._current().policy_commands or [])

    # ---- the goal contract (environments.goals; the kinds live in environments.tw_goals) ----

    def predicate_kinds(self) -> list[Any]:
        return list(tw_goals.KINDS)

    def facts(self) -> frozenset[tuple[str, ...]]:
        return tw_goals.facts(self._current().facts or [])

    def slot_values(self) -> dict[str, list[str]]:
        return tw_goals.slot_values(self._current().facts or [])

    def typeable_values(self) -> list[str]:
        return []  # a text game's commands are all in admissible_actions

    def goal_templates(self) -> dict[str, Any]:
        return tw_goals.templates(self._current().facts or [])

    def vocabulary(self) -> dict[str, list[str]]:
        return tw_goals.vocabulary()

    def _chain(self) -> tuple[Any, Any, Any, Any]:
        """StateTracking, Inform7Data, GameData and JerichoEnv under TWInform7 (textworld 1.7.0)."""
        tracking = self._env._wrapped_env
        i7data = tracking._wrapped_env
        gamedata = i7data._wrapped_env
        jericho_env = gamedata._wrapped_env
        names = [type(w).__name__ for w in (tracking, i7data, gamedata, jericho_env)]
        if names != ["StateTracking", "Inform7Data", "GameData", "JerichoEnv"]:
            raise EnvironmentFailure(f"textworld: unexpected wrapper chain {names}; pin 1.7.0")
        return tracking, i7data, gamedata, jericho_env

    def snapshot(self) -> _Snapshot:
        state = self._current()
        tracking, i7data, _, jericho_env = self._chain()
        return _Snapshot(
            env_task=self._env_task or "",
            vm=jericho_env._jericho.get_state(),
            state=dict(state),
            prev_state=i7data._prev_state,
            progression=tracking._game_progression.copy(),
            last_action=tracking._last_action,
            previous_policy=_copy_list(tracking._previous_winning_policy),
            current_policy=_copy_list(tracking._current_winning_policy),
            moves=tracking._moves,
        )

    def restore(self, state: _Snapshot) -> None:
        if state.env_task != self._env_task:
            self.reset(TaskSpec(state.env_task, seed=parse_env_task(state.env_task)[2]))
        from textworld.core import GameState

        tracking, i7data, gamedata, jericho_env = self._chain()
        jericho_env._jericho.set_state(state.vm)
        game_state = GameState(state.state)
        for wrapper in (tracking, i7data, gamedata, jericho_env):
            wrapper.state = game_state
        i7data._prev_state = state.prev_state
        tracking._game_progression = state.progression.copy()  # the snapshot stays reusable
        tracking._last_action = state.last_action
        tracking._previous_winning_policy = _copy_list(state.previous_policy)
        tracking._current_winning_policy = _copy_list(state.current_policy)
        tracking._moves = state.moves
        self._state = game_state

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._env_task, self._state = None, None, None


def _copy_list(items: list[Any] | None) -> list[Any] | None:
    return None if items is None else list(items)
