"""The goal contract: goal tasks round-trip through env_task, render from phrasings, and a wrapped
environment judges them by its facts (TextWorld for real; the shop in test_webapp_goals)."""

from __future__ import annotations

import pytest

from trajforge.environments import goals
from trajforge.environments.base import EnvironmentFailure, TaskSpec
from trajforge.environments.textworld import TextWorldEnvironment
from trajforge.schemas import ids

BASE = "tw-cooking/recipe=1,take=1,go=1,open=1,cook=1,cut=1/seed=1022050301"


def test_env_task_is_canonical_so_the_same_goal_is_the_same_task():
    a = goals.format_env_task(BASE, [("open", "fridge"), ("carried", "tomato")], ["look"])
    b = goals.format_env_task(BASE, [["carried", "tomato"], ["open", "fridge"], ["open", "fridge"]], ["look"])
    assert a == b and ids.task_id("textworld", a, 1) == ids.task_id("textworld", b, 1)
    parsed = goals.parse_env_task(a)
    assert parsed == goals.GoalTask(BASE, (("carried", "tomato"), ("open", "fridge")), ("look",))
    assert goals.parse_env_task(BASE) is None
    with pytest.raises(EnvironmentFailure, match="malformed goal task"):
        goals.parse_env_task("goal:{nope")


def test_a_kind_needs_two_phrasings_and_render_names_every_slot():
    with pytest.raises(ValueError, match="two phrasings"):
        goals.PredicateKind("x", ("thing",), ("Take the {0}.",))
    kinds = {k.name: k for k in TextWorldEnvironment().predicate_kinds()}
    text = goals.render(kinds, (("in", "tomato", "fridge"),), "t")
    assert "tomato" in text and "fridge" in text
    assert goals.render(kinds, (("raw", "tomato"),), "t") is None  # no phrasing: the coverage gap


@pytest.fixture(scope="module")
def tw(tmp_path_factory):
    env = goals.wrap(
        TextWorldEnvironment(
            options={"cut": True, "cook": True, "open": True}, cache_dir=str(tmp_path_factory.mktemp("tw"))
        )
    )
    yield env
    env.close()


def test_textworld_runs_a_goal_task_with_a_setup_prefix(tw):
    env_task = goals.format_env_task(BASE, [("carried", "tomato"), ("open", "fridge")], ["open fridge"])
    reset = tw.reset(TaskSpec(env_task, 1022050301))
    assert reset.instruction.count("tomato") == 1 and "fridge" in reset.instruction
    assert ("open", "fridge") in tw.facts()  # the setup ran silently
    outcome = tw.step("take tomato from counter")
    assert outcome.success is True and outcome.done and outcome.reward == 1.0
    # The same env_task again: the same instruction (phrasings are fixed by content).
    assert tw.reset(TaskSpec(env_task, 1)).instruction == reset.instruction


def test_textworld_goal_not_reached_is_not_success(tw):
    tw.reset(TaskSpec(goals.format_env_task(BASE, [("diced", "tomato")]), 1))
    outcome = tw.step("take tomato from counter")
    assert outcome.success is None and not outcome.done
    assert tw.walkthrough() is None  # the base quest's walkthrough is not this goal's


def test_a_setup_action_that_does_not_apply_fails_the_item(tw):
    bad = goals.format_env_task(BASE, [("diced", "tomato")], ["eat meal"])
    with pytest.raises(EnvironmentFailure, match="not admissible") as exc:
        tw.reset(TaskSpec(bad, 1))
    assert exc.value.reason == "setup_failed"
