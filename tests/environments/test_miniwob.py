"""MiniWoB++ in the real browser: tasks load, rewards flow, resets are deterministic, nothing leaks."""

from __future__ import annotations

import os
import pickle
import re
import urllib.request
from collections.abc import Iterator

import pytest

from trajforge.environments import registry
from trajforge.environments.base import ConfigError, TaskSpec
from trajforge.environments.browser import quote

pytest.importorskip("playwright")
pytest.importorskip("miniwob")
if not os.access("/usr/bin/chromium", os.X_OK):
    pytest.skip("needs Chromium at /usr/bin/chromium", allow_module_level=True)

from trajforge.environments.miniwob import DEFAULT_TASKS, MiniWoBEnvironment  # noqa: E402


@pytest.fixture(scope="module")
def env() -> Iterator[MiniWoBEnvironment]:
    environment = MiniWoBEnvironment()
    yield environment
    environment.close()


def ref(env: MiniWoBEnvironment, role: str, name: str | None = None) -> str:
    return next(e.ref for e in env.elements if e.role == role and (name is None or e.name == name))


def solve(env: MiniWoBEnvironment, task: str, instruction: str) -> Iterator[str]:
    """A scripted solver from the instruction and the observed elements (no task internals)."""
    quoted = re.findall(r'"([^"]*)"', instruction)
    if task == "click-button":
        yield f"click {ref(env, 'button', quoted[0])}"
    elif task == "click-checkboxes":
        wanted = re.match(r"Select (.*) and click Submit\.", instruction).group(1)
        for name in [] if wanted == "nothing" else wanted.split(", "):
            yield f"click {ref(env, 'checkbox', name)}"
        yield f"click {ref(env, 'button', 'Submit')}"
    elif task == "enter-text":
        yield f"type {ref(env, 'textbox')} {quote(quoted[0])}"
        yield f"click {ref(env, 'button', 'Submit')}"
    elif task == "click-tab-2":
        for tab in [e.ref for e in env.elements if e.role == "tab"]:
            yield f"click {tab}"
            links = [e.ref for e in env.elements if e.role == "clickable" and e.name == quoted[0]]
            if links:
                yield f"click {links[0]}"
                return
    elif task == "login-user":
        boxes = [e.ref for e in env.elements if e.role == "textbox"]
        yield f"type {boxes[0]} {quote(quoted[0])}"
        yield f"type {boxes[1]} {quote(quoted[1])}"
        yield f"click {ref(env, 'button', 'Login')}"
    elif task == "choose-list":
        wanted = re.match(r"Select (.*) from the list", instruction).group(1)
        yield f"select {ref(env, 'select')} {quote(wanted)}"
        yield f"click {ref(env, 'button', 'Submit')}"


@pytest.mark.parametrize(
    "task", ["click-button", "click-checkboxes", "enter-text", "click-tab-2", "login-user", "choose-list"]
)
def test_a_scripted_solver_earns_the_reward(env, task):
    for seed in (1, 2):
        reset = env.reset(TaskSpec(task, seed))
        total, outcome = 0.0, None
        for action in solve(env, task, reset.instruction):
            assert action in env.admissible_actions()
            outcome = env.step(action)
            total += outcome.reward
            if outcome.done:
                break
        assert outcome is not None and outcome.done, reset.observation
        assert outcome.success and outcome.info["raw_reward"] > 0 and total == outcome.reward == 1.0
        assert env.admissible_actions() == []


def test_a_wrong_answer_ends_the_episode_with_a_negative_reward(env):
    reset = env.reset(TaskSpec("click-test-2", 5))
    wanted = re.match(r"Click button (\w+)\.", reset.instruction).group(1)
    wrong = next(e.ref for e in env.elements if e.role == "button" and e.name != wanted)
    outcome = env.step(f"click {wrong}")
    assert (outcome.reward, outcome.done, outcome.success) == (-1.0, True, False)
    after = env.step(f"click {wrong}")
    assert (after.reward, after.done, after.observation) == (0.0, True, "The episode is over.")


def test_reset_is_deterministic_for_a_seed(env):
    for task in ["click-checkboxes", "login-user", "click-tab-2"]:
        first = env.reset(TaskSpec(task, 42))
        actions = env.admissible_actions()
        step = env.step(actions[0])
        again = env.reset(TaskSpec(task, 42))
        assert (again.instruction, again.observation, env.admissible_actions()) == (
            first.instruction,
            first.observation,
            actions,
        )
        assert env.step(actions[0]).observation == step.observation  # replay gives the same branch
    instructions = {env.reset(TaskSpec("click-button", seed)).instruction for seed in range(6)}
    assert len(instructions) > 1


def test_every_default_task_starts_with_an_instruction_and_actions(env):
    assert len(DEFAULT_TASKS) >= 15
    for task in DEFAULT_TASKS:
        reset = env.reset(TaskSpec(task, 3))
        assert reset.instruction and reset.instruction in reset.observation, task
        assert env.admissible_actions(), task
        assert "127.0.0.1" not in reset.observation  # the port changes between runs; data must not


def test_task_specs_cycle_deterministically():
    env = MiniWoBEnvironment(tasks=["click-test", "enter-text"])
    specs = env.task_specs(5, seed=9)
    assert specs == env.task_specs(5, seed=9) != env.task_specs(5, seed=10)
    assert [s.env_task for s in specs] == ["click-test", "enter-text"] * 2 + ["click-test"]
    assert len({s.seed for s in specs}) == 5
    env.close()  # never started: nothing to stop


def test_options_are_checked_and_the_environment_is_registered():
    with pytest.raises(ConfigError, match="click-buton"):
        MiniWoBEnvironment(tasks=["click-buton"])
    with pytest.raises(ConfigError, match="episode_max_time"):
        MiniWoBEnvironment(episode_max_time=10**9)
    with pytest.raises(ConfigError, match="start_urls: miniwob serves its own site"):
        MiniWoBEnvironment(start_urls=["http://example.com/"])
    with pytest.raises(ConfigError, match="step_timeout_s"):  # a browser option, checked by the browser
        MiniWoBEnvironment(step_timeout_s=0)
    with pytest.raises(TypeError, match="colour"):
        MiniWoBEnvironment(colour="red")
    env = registry.make("miniwob", tasks=["click-test"], screenshots=True, step_timeout_s=30)
    assert isinstance(env, MiniWoBEnvironment)
    copy = pickle.loads(pickle.dumps(env))
    assert (copy.tasks, copy.screenshots, copy.step_timeout_s, copy.viewport["width"]) == (
        ["click-test"],
        True,
        30.0,
        400,
    )


def test_environments_share_one_chromium_that_stops_with_the_last(env):
    env.reset(env.task_specs(1, seed=0)[0])
    other = MiniWoBEnvironment(tasks=["click-test"], screenshots=True)
    reset = other.reset(other.task_specs(1, seed=0)[0])
    assert reset.info["screenshot"].startswith(b"\x89PNG")
    origin = other._allowed()[0]
    pids = other.chromium_pids()
    assert pids and pids == env.chromium_pids()  # one browser, a context for each episode
    other.close()
    with pytest.raises(OSError):  # its own site is gone
        urllib.request.urlopen(f"{origin}/miniwob/click-test.html", timeout=2)
    assert env.step(f"click {env.elements[0].ref}").info["valid_action"]  # the browser lives on
    alone = MiniWoBEnvironment(tasks=["click-test"])
    env.close()  # the module's environment is made again by reset, as after a pickle
    alone.reset(alone.task_specs(1, seed=0)[0])
    pids = alone.chromium_pids()
    alone.close()
    assert pids and not any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in pids)


def _running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
