"""The python environment (CodeAct): cells in a persistent sandboxed interpreter, hidden tests on
submit, HumanEval's canonical solutions as the walkthrough."""

from __future__ import annotations

import pytest

from trajforge.environments import registry
from trajforge.environments.base import TaskSpec
from trajforge.environments.code.sandbox import bwrap_path
from trajforge.environments.code.tasks import FIXTURES, humaneval, mutants

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="no bubblewrap (make test installs it)")


@pytest.fixture(scope="module")
def env():
    e = registry.make("python", suite="fixtures", cell_cpu_s=1, cell_timeout_s=8)
    yield e
    e.close()


def _play(env, actions):
    outcome = None
    for action in actions:
        outcome = env.step(action)
    return outcome


def test_humaneval_ships_its_164_problems():
    problems = humaneval()
    assert len(problems) == 164 and problems[0].name == "HumanEval/0"
    assert all("def check(candidate)" in p.test for p in problems)


@pytest.mark.parametrize("name", [t.name for t in FIXTURES] + ["HumanEval/0", "HumanEval/38"])
def test_the_walkthrough_passes_the_hidden_tests(name):
    env = registry.make("python", tasks=[name])
    try:
        env.reset(TaskSpec(name, 0))
        outcome = _play(env, env.walkthrough())
        assert outcome.done and outcome.success and outcome.reward == 1.0
        assert env.admissible_actions() == [] and env.walkthrough() is None
    finally:
        env.close()


def test_a_wrong_solution_fails_and_the_tests_stay_hidden(env):
    task = FIXTURES[1]  # fizzbuzz
    env.reset(TaskSpec(task.name, 0))
    wrong = task.prompt + mutants(task.solution)[0]
    shown = env.step(wrong).observation + env.step("print('check' in globals())").observation
    assert "False" in shown  # the live interpreter never holds the tests
    outcome = env.step("submit")
    assert outcome.done and outcome.success is False and outcome.reward == 0.0
    assert outcome.observation.startswith("Hidden tests failed:")
    assert "assert candidate" not in outcome.observation


def test_state_persists_between_cells_and_a_reset_forgets_it(env):
    env.reset(TaskSpec(FIXTURES[0].name, 0))
    env.step("secret = 7")
    assert env.step("print(secret * 6)").observation == "42\n"
    env.reset(TaskSpec(FIXTURES[0].name, 0))
    assert "NameError" in env.step("print(secret)").observation


def test_a_looping_cell_is_stopped_and_the_episode_goes_on(env):
    task = FIXTURES[0]
    env.reset(TaskSpec(task.name, 0))
    env.step(task.canonical_cell)
    stopped = env.step("while True:\n    pass")
    # its CPU time (the interpreter lives on) or, on a loaded machine, its wall deadline (restarted)
    assert stopped.info["reason"] in ("cpu_limit", "timeout") and not stopped.done
    assert stopped.observation.endswith(f"[stopped: {stopped.info['reason']}]")
    assert _play(env, env.walkthrough()).success


def test_candidates_hold_the_solution_near_misses_and_submit(env):
    task = FIXTURES[2]
    env.reset(TaskSpec(task.name, 0))
    actions = env.admissible_actions()
    assert actions[0] == task.canonical_cell and actions[-1] == "submit"
    assert len(set(actions)) == len(actions) >= 4
    verdicts = []
    for cell in actions[1:-1]:
        env.reset(TaskSpec(task.name, 0))
        verdicts.append(_play(env, [cell, "submit"]).success)
    assert verdicts.count(True) == 0  # every near miss and stub fails this fixture's tests


def test_a_missing_sandbox_is_a_config_error_naming_the_fix(monkeypatch):
    from trajforge.environments.base import ConfigError
    from trajforge.environments.code import sandbox

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(ConfigError, match="apt-get install -y bubblewrap"):
        registry.make("python", suite="fixtures")
