"""TextWorld games: the env_task grammar and the cache of generated games.

A task's `env_task` names its game completely, so any worker (on any machine) can regenerate it:

    tw-cooking/recipe=1,take=1,go=1/seed=12345
    custom/world_size=3,nb_objects=5,quest_length=3,quest_breadth=1/seed=7

Settings left out of an env_task take TextWorld's own defaults (`tw-make`'s), never ours, so a
change of our defaults never changes what an existing env_task means. Games are cached under
`<cache>/textworld/<textworld version>/<env_task with "/" as "__">/game.z8` and built atomically
(in a temp dir, then renamed).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from trajforge.environments.base import ConfigError, EnvironmentFailure

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


def full_settings(challenge: str, given: dict[str, Any], where: str) -> dict[str, Any]:
    settings = {key: opt.default for key, opt in SCHEMAS[challenge].items()}
    for key, value in given.items():
        settings[key] = _check_value(challenge, key, value, where)
    if challenge == "tw-cooking" and settings["take"] > settings["recipe"]:
        raise ConfigError(
            f"{where}: setting take={settings['take']} exceeds recipe={settings['recipe']}; "
            "take counts ingredients to fetch, so use take <= recipe"
        )
    return settings


def check_challenge(challenge: Any) -> str:
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
    settings = full_settings(challenge, given, f"env_task {env_task!r}")
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
