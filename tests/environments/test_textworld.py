"""The TextWorld adapter against real TextWorld games (three are generated, ~6 s)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import trajforge.environments.textworld_games as tw
from trajforge.environments.base import ConfigError, EnvironmentFailure, TaskSpec
from trajforge.environments.textworld import TextWorldEnvironment, ensure_games

# Jericho warns about every TextWorld game and long input; TextWorld mutes these outside pytest.
pytestmark = [
    pytest.mark.filterwarnings("ignore::jericho.UnsupportedGameWarning"),
    pytest.mark.filterwarnings("ignore::jericho.TruncatedInputActionWarning"),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trajforge-cache")


@pytest.fixture(scope="module")
def tasks(cache: Path) -> dict[str, list[TaskSpec]]:
    """Two cooking games and one custom game, generated once in two worker processes."""
    found = {
        "tw-cooking": TextWorldEnvironment(cache_dir=str(cache)).task_specs(2, seed=1),
        "custom": TextWorldEnvironment("custom", cache_dir=str(cache)).task_specs(1, seed=1),
    }
    env_tasks = [spec.env_task for specs in found.values() for spec in specs]
    assert set(ensure_games(env_tasks, cache, workers=2)) == set(env_tasks)
    return found


@pytest.fixture
def env(cache: Path):
    env = TextWorldEnvironment(cache_dir=str(cache))
    yield env
    env.close()


def _follow_walkthrough(env: TextWorldEnvironment) -> tuple[float, object]:
    total, outcome = 0.0, None
    for action in env.walkthrough() or []:
        outcome = env.step(action)
        total += outcome.reward
    return total, outcome


def test_task_specs_are_deterministic_and_self_describing(cache: Path) -> None:
    env = TextWorldEnvironment(cache_dir=str(cache))
    first, again, other = env.task_specs(3, 7), env.task_specs(3, 7), env.task_specs(3, 8)
    assert first == again
    assert [s.env_task for s in first] != [s.env_task for s in other]
    assert len({s.env_task for s in first}) == 3
    for spec in first:
        assert spec.env_task.startswith("tw-cooking/recipe=1,take=1,go=1/seed=")
        assert str(cache) not in spec.env_task
        challenge, settings, seed = tw.parse_env_task(spec.env_task)
        assert seed == spec.seed
        assert tw.format_env_task(challenge, settings, seed) == spec.env_task


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"challenge": "tw-nope"}, "challenge"),
        ({"options": {"recipe": 0}}, "recipe"),
        ({"options": {"go": 2}}, "go"),
        ({"options": {"take": 3}}, "take"),
        ({"options": {"cook": 1}}, "cook"),
        ({"options": {"colour": "red"}}, "colour"),
        ({"challenge": "custom", "options": {"recipe": 1}}, "recipe"),
        ({"options": "recipe=1"}, "options"),
        ({"cache_dir": 3}, "cache_dir"),
    ],
)
def test_bad_options_raise_config_error(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        TextWorldEnvironment(**kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "env_task",
    [
        "tw-cooking/recipe=1/seed=x",
        "tw-cooking/seed=1",
        "nope/a=1/seed=1",
        "tw-cooking/go=7/seed=1",
    ],
)
def test_malformed_env_task_raises_config_error(env_task: str) -> None:
    with pytest.raises(ConfigError, match="env_task"):
        tw.parse_env_task(env_task)


def test_second_ensure_games_does_not_regenerate(
    cache: Path, tasks: dict[str, list[TaskSpec]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_tasks = [spec.env_task for specs in tasks.values() for spec in specs]
    paths = ensure_games(env_tasks, cache)
    mtimes = {task: path.stat().st_mtime_ns for task, path in paths.items()}

    def generate(env_task: str, dest: Path) -> None:
        raise AssertionError(f"regenerated {env_task}")

    monkeypatch.setattr(tw, "_generate", generate)
    again = ensure_games(env_tasks, cache)
    assert again == paths
    assert {task: path.stat().st_mtime_ns for task, path in again.items()} == mtimes


def test_failed_generation_leaves_no_half_game(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def generate(env_task: str, dest: Path) -> None:
        (dest / tw.GAME_FILE).write_bytes(b"half a game")
        raise RuntimeError("compiler died")

    monkeypatch.setattr(tw, "_generate", generate)
    env_task = "tw-cooking/recipe=1,take=1,go=1/seed=5"
    with pytest.raises(EnvironmentFailure, match="compiler died") as caught:
        tw.ensure_game(env_task, tmp_path)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.reason == "game_build"  # the code in failures.reason
    assert ensure_games([env_task], tmp_path) == {}
    assert list(tw.cache_root(tmp_path).iterdir()) == []


@pytest.mark.parametrize("challenge", ["tw-cooking", "custom"])
def test_walkthrough_wins_with_total_reward_one(
    cache: Path, tasks: dict[str, list[TaskSpec]], challenge: str
) -> None:
    env = TextWorldEnvironment(challenge, cache_dir=str(cache))
    start = env.reset(tasks[challenge][0])
    assert start.instruction and start.instruction in start.observation
    assert "$$" not in start.observation
    assert env.admissible_actions() == sorted(env.admissible_actions())
    total, last = _follow_walkthrough(env)
    assert last is not None and last.done and last.success is True
    assert total == pytest.approx(1.0)
    assert env.step("look").done and env.admissible_actions() == []
    env.close()


def test_garbage_actions_do_not_crash(env, tasks: dict[str, list[TaskSpec]]) -> None:
    env.reset(tasks["tw-cooking"][0])
    for action in ["xyzzy", "", "   ", "take the moon", "a" * 300, "restart", "quit"]:
        outcome = env.step(action)
        assert not outcome.done and outcome.reward == 0.0 and outcome.success is None
    total, last = _follow_walkthrough(env)
    assert last.success is True and total == pytest.approx(1.0)


def test_snapshot_restore_branches(env, tasks: dict[str, list[TaskSpec]]) -> None:
    game, other_game = tasks["tw-cooking"]
    env.reset(game)
    first = env.walkthrough()[0]
    score_step = env.step(first)
    snap = env.snapshot()
    expected = (env.admissible_actions(), env.walkthrough())

    for _ in range(2):  # a snapshot is reusable
        detours = [a for a in env.admissible_actions() if a not in expected[1]][:4]
        for action in detours + ["xyzzy"]:
            env.step(action)
        env.restore(snap)
        assert (env.admissible_actions(), env.walkthrough()) == expected
        total, last = _follow_walkthrough(env)
        assert last.success is True
        assert score_step.reward + total == pytest.approx(1.0)

    env.reset(other_game)  # restoring into another game's session restarts that game
    env.restore(snap)
    assert (env.admissible_actions(), env.walkthrough()) == expected
    assert _follow_walkthrough(env)[1].success is True


def test_pickles_as_configuration(cache: Path) -> None:
    env = TextWorldEnvironment("custom", {"world_size": 2}, cache_dir=str(cache))
    copy = pickle.loads(pickle.dumps(env))
    assert (copy.challenge, copy.settings, copy.cache_dir) == (
        env.challenge,
        env.settings,
        env.cache_dir,
    )


def test_calls_before_reset_fail_cleanly(env) -> None:
    with pytest.raises(EnvironmentFailure, match="reset"):
        env.step("look")
