"""The shop speaks the goal contract: facts read from the server's state, a goal task judged by
them (not by the base template), in a real Chromium."""

from __future__ import annotations

import json

import pytest

from trajforge.environments import goals
from trajforge.environments.base import TaskSpec
from trajforge.environments.webapp.environment import WebAppEnvironment


@pytest.fixture(scope="module")
def env():
    e = goals.wrap(WebAppEnvironment())
    yield e
    e.close()


def ref(env, role: str, name_part: str) -> str:
    return next(el.ref for el in env.elements if el.role == role and name_part.lower() in el.name.lower())


def test_a_goal_task_is_judged_by_its_facts_and_typeable_values_come_from_the_instance(env):
    env.reset(TaskSpec("add_to_cart", 5))
    email = env.slot_values()["email"][0]
    assert email in env.typeable_values()
    before = env.facts()
    assert ("profile_email", email) not in before and (
        "not_in_cart",
        env.slot_values()["product"][0],
    ) in before
    env_task = goals.format_env_task("add_to_cart", [("profile_email", email)])
    reset = env.reset(TaskSpec(env_task, 5))
    assert email in reset.instruction
    env.step(f"click {ref(env, 'link', 'Account')}")
    typed = f"type {ref(env, 'textbox', 'Email')} {json.dumps(email)}"
    assert typed in env.admissible_actions()  # free play offers the instance's values
    assert env.step(typed).success is None
    outcome = env.step(f"click {ref(env, 'button', 'Save')}")
    assert outcome.success is True and outcome.done
    assert ("profile_email", email) in env.facts()


def test_free_play_is_not_ended_by_the_base_template(env):
    # add_to_cart's own checker would end the episode once its item is in the cart; free play goes on.
    env.reset(TaskSpec(goals.format_env_task("add_to_cart", []), 5))
    products = set(env.slot_values()["product"])
    for _ in range(2):
        env.step(f"click {ref(env, 'link', 'Bags')}")
        env.step(f"click {next(el.ref for el in env.elements if el.name.lower() in products)}")
        outcome = env.step(f"click {ref(env, 'button', 'Add to cart')}")
        assert not outcome.done
        env.step(f"click {ref(env, 'link', 'Home')}")
    assert any(f[0] == "in_cart" for f in env.facts())
