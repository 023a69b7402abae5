"""TextWorld text games (the tw-cooking challenge or custom games) behind the Environment protocol.

A task's `env_task` names its game completely, so any worker (on any machine) can regenerate it:

    tw-cooking/recipe=1,take=1,go=1/seed=12345
    custom/world_size=3,nb_objects=5,quest_length=3,quest_breadth=1/seed=7

Settings left out of an env_task take TextWorld's own defaults (`tw-make`'s), never ours, so a
change of our defaults never changes what an existing env_task means. Games are cached under
`<cache>/textworld/<textworld version>/<env_task with "/" as "__">/game.z8` and built atomically
(in a temp dir, then renamed).

Snapshots save the Z-machine state plus the state tracker's bookkeeping (~1 ms) instead of
`env.copy()` (~150 ms). That reaches into the wrapper chain of textworld 1.7.0 (pinned), and
tests/environments/test_textworld.py checks that a restored branch still wins.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
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

log = logging.getLogger(__name__)

GAME_FILE = "game.z8"


@dataclass(frozen=True)
class _Opt:
    kind: type  # int, bool or str
    default: Any  # TextWorld's own default: what a setting missing from an env_task means
    shown: bool = False  # always written into env_task (for readability)
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None


_BOOL = _Opt(bool, False)

SCHEMAS: dict[str, dict[str, _Opt]] = {
    "tw-cooking": {
        "recipe": _Opt(int, 1, shown=True, minimum=1),
        "take": _Opt(int, 0, shown=True, minimum=0),
        "go": _Opt(int, 1, shown=True, choices=(1, 6, 9, 12)),
        "open": _BOOL,
        "cook": _BOOL,
        "cut": _BOOL,
        "drop": _BOOL,
        "recipe_seed": _Opt(int, 0, minimum=0),
        "split": _Opt(str, "", choices=("", "train", "valid", "test")),
    },
    "custom": {
        "world_size": _Opt(int, 5, shown=True, minimum=1),
        "nb_objects": _Opt(int, 10, shown=True, minimum=1),
        "quest_length": _Opt(int, 3, shown=True, minimum=1),
        "quest_breadth": _Opt(int, 1, shown=True, minimum=1),
    },
}

# The smallest real games: one room, one ingredient to fetch (a 3-step walkthrough).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "tw-cooking": {"recipe": 1, "take": 1, "go": 1},
    "custom": {"world_size": 3, "nb_objects": 5, "quest_length": 3},
}

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


# ---- options and env_task -----------------------------------------------------------------


def _check_value(challenge: str, key: str, value: Any, where: str) -> Any:
    schema = SCHEMAS[challenge]
    if key not in schema:
        raise ConfigError(
            f"{where}: unknown setting {key!r}={value!r} for challenge {challenge!r}; "
            f"use some of {', '.join(schema)}"
        )
    opt = schema[key]
    # bool is a subclass of int: reject True where a number is meant and 1 where a flag is.
    if type(value) is not opt.kind:
        raise ConfigError(
            f"{where}: setting {key}={value!r} must be of type {opt.kind.__name__}; "
            f"e.g. {key}={opt.default!r}"
        )
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(
            f"{where}: setting {key}={value!r} is not allowed; choose one of {list(opt.choices)}"
        )
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{where}: setting {key}={value!r} is too small; use {opt.minimum} or more")
    return value


def _full_settings(challenge: str, given: dict[str, Any], where: str) -> dict[str, Any]:
    settings = {key: opt.default for key, opt in SCHEMAS[challenge].items()}
    for key, value in given.items():
        settings[key] = _check_value(challenge, key, value, where)
    if challenge == "tw-cooking" and settings["take"] > settings["recipe"]:
        raise ConfigError(
            f"{where}: setting take={settings['take']} exceeds recipe={settings['recipe']}; "
            "take counts ingredients to fetch, so use take <= recipe"
        )
    return settings


def _check_challenge(challenge: Any) -> str:
    if challenge not in SCHEMAS:
        raise ConfigError(
            f"challenge: unknown TextWorld challenge {challenge!r}; use one of {', '.join(SCHEMAS)}"
        )
    return challenge


def format_env_task(challenge: str, settings: dict[str, Any], seed: int) -> str:
    """The canonical env_task; settings equal to TextWorld's default are left out."""
    parts = []
    for key, opt in SCHEMAS[challenge].items():
        value = settings[key]
        if opt.shown or value != opt.default:
            text = str(int(value)) if opt.kind is bool else str(value)
            parts.append(f"{key}={text}")
    return f"{challenge}/{','.join(parts)}/seed={seed}"


def _parse_value(opt: _Opt | None, text: str) -> Any:
    if opt is None or opt.kind is str:
        return text
    if opt.kind is bool:
        return {"1": True, "0": False}.get(text, text)
    try:
        return int(text)
    except ValueError:
        return text  # _check_value reports it


def parse_env_task(env_task: str) -> tuple[str, dict[str, Any], int]:
    """(challenge, full settings, seed) from an env_task; raises ConfigError when malformed."""
    example = "tw-cooking/recipe=1,take=1,go=1/seed=12345"
    pieces = env_task.split("/")
    if len(pieces) != 3 or not re.fullmatch(r"seed=\d+", pieces[2]):
        raise ConfigError(f"env_task: {env_task!r} is malformed; write it like {example!r}")
    challenge = pieces[0]
    if challenge not in SCHEMAS:
        raise ConfigError(f"env_task: unknown challenge in {env_task!r}; use one of {', '.join(SCHEMAS)}")
    given: dict[str, Any] = {}
    for item in filter(None, pieces[1].split(",")):
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"env_task: setting {item!r} in {env_task!r} needs key=value")
        given[key] = _parse_value(SCHEMAS[challenge].get(key), text)
    settings = _full_settings(challenge, given, f"env_task {env_task!r}")
    return challenge, settings, int(pieces[2].removeprefix("seed="))


# ---- the game cache -----------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where games live: <cache_dir or $TRAJFORGE_CACHE or ~/.cache/trajforge>/textworld/<ver>."""
    base = cache_dir or os.environ.get("TRAJFORGE_CACHE") or Path.home() / ".cache" / "trajforge"
    # The same seed gives another game under another generator version: keep them apart.
    return Path(base).expanduser().absolute() / "textworld" / version("textworld")


def _game_dir(root: Path, env_task: str) -> Path:
    return root / env_task.replace("/", "__")


def _generate(env_task: str, dest: Path) -> None:
    """Build the game of env_task into dest/game.z8 (+ game.json, which TextWorld needs)."""
    import textworld
    import textworld.challenges
    from textworld.generator import compile_game

    challenge, settings, seed = parse_env_task(env_task)
    options = textworld.GameOptions()
    options.seeds = seed
    options.path = str(dest / GAME_FILE)
    if challenge == "custom":
        options.nb_rooms = settings["world_size"]
        options.nb_objects = settings["nb_objects"]
        options.quest_length = settings["quest_length"]
        options.quest_breadth = settings["quest_breadth"]
        textworld.make(options)
        return
    _, make, _ = textworld.challenges.CHALLENGES[challenge]
    game = make(settings={**settings, "split": settings["split"] or None}, options=options)
    compile_game(game, options)


def ensure_game(env_task: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The game file of env_task, generated first if the cache lacks it."""
    parse_env_task(env_task)
    return _ensure_in(cache_root(cache_dir), env_task)


def _ensure_in(root: Path, env_task: str) -> Path:
    final = _game_dir(root, env_task)
    if (final / GAME_FILE).is_file():
        return final / GAME_FILE
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        try:
            _generate(env_task, tmp)
        except Exception as exc:
            raise EnvironmentFailure(
                f"textworld: could not generate {env_task!r}: {exc}", reason="game_build"
            ) from exc
        (tmp / "env_task.txt").write_text(env_task + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared
        try:
            tmp.rename(final)
        except OSError:
            if not (final / GAME_FILE).is_file():  # not a concurrent worker winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / GAME_FILE


def ensure_games(
    env_tasks: list[str], cache_dir: str | os.PathLike[str] | None = None, workers: int = 2
) -> dict[str, Path]:
    """Game files for env_tasks, generating the missing ones in `workers` processes.

    A game that fails to generate is logged and left out; `reset` on it raises the cause.
    """
    for env_task in env_tasks:
        parse_env_task(env_task)
    root = cache_root(cache_dir)
    missing = [t for t in dict.fromkeys(env_tasks) if not (_game_dir(root, t) / GAME_FILE).is_file()]
    if len(missing) > 1 and workers > 1:
        # spawn: forking a parent that runs threads (Beam, Prefect) can deadlock.
        ctx = get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(missing)), mp_context=ctx) as pool:
            errors = list(pool.map(_try_ensure, [root] * len(missing), missing))
    else:
        errors = [_try_ensure(root, t) for t in missing]
    failed = {t: error for t, error in zip(missing, errors, strict=True) if error}
    for env_task, error in failed.items():
        log.warning("textworld: dropped game %s: reason=%s", env_task, error)
    return {t: _game_dir(root, t) / GAME_FILE for t in env_tasks if t not in failed}


def _try_ensure(root: Path, env_task: str) -> str | None:
    """None when the game is there, else why not (runs in worker processes)."""
    try:
        _ensure_in(root, env_task)
    except (EnvironmentFailure, OSError) as exc:
        return str(exc)
    return None


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
        self.challenge = _check_challenge(challenge)
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"options: {options!r} must be a mapping, e.g. {{'recipe': 1}}")
        self.options = dict(options or {})
        given = {**DEFAULT_OPTIONS[challenge], **self.options}
        self.settings = _full_settings(challenge, given, "options")
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
