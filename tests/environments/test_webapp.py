"""The shop in a real Chromium: a scripted agent completes every template; checkers judge."""

from __future__ import annotations

import json

import pytest

from trajforge.environments.base import TaskSpec
from trajforge.environments.webapp.environment import WebAppEnvironment
from trajforge.environments.webapp.tasks import TEMPLATES


@pytest.fixture(scope="module")
def env():
    e = WebAppEnvironment()
    yield e
    e.close()


def ref(env, role: str, name_part: str) -> str:
    return next(el.ref for el in env.elements if el.role == role and name_part.lower() in el.name.lower())


def act(env, action: str):
    assert action in env.admissible_actions(), (action, env.admissible_actions())
    return env.step(action)


def solve(env, template: str, fields: dict[str, str]):
    """A competent agent, through admissible actions only."""
    if template == "update_email":
        act(env, f"click {ref(env, 'link', 'Account')}")
        act(env, f"type {ref(env, 'textbox', 'Email')} {json.dumps(fields['email'])}")
        return act(env, f"click {ref(env, 'button', 'Save')}")
    if "query" in fields:
        act(env, f"type {ref(env, 'textbox', 'Search')} {json.dumps(fields['query'])}")
    if "max_price" in fields:
        act(env, f"type {ref(env, 'textbox', 'Max price')} {json.dumps(fields['max_price'])}")
    if "category" in fields:
        act(env, f"select {ref(env, 'select', 'Category')} {json.dumps(fields['category'].title())}")
    act(env, f"click {ref(env, 'button', 'Search')}")
    return env, template


def test_update_email_is_judged_by_the_server_state(env):
    task = TaskSpec("update_email", 21)
    env.reset(task)
    fields = env._shop_task.fields
    outcome = solve(env, "update_email", fields)
    assert (outcome.reward, outcome.done, outcome.success) == (1.0, True, True)
    assert env.admissible_actions() == []


def test_the_cheapest_item_task_needs_the_right_product(env):
    env.reset(TaskSpec("cheapest_in_category", 4))
    shop_task = env._shop_task
    solve(env, "cheapest_in_category", shop_task.fields)
    links = [el for el in env.elements if el.role == "link" and el.name not in ("Home", "Account")]
    first = links[1]  # results are sorted by price: the first product link after "Cart (0)"
    act(env, f"click {first.ref}")
    outcome = act(env, f"click {ref(env, 'button', 'Add to cart')}")
    assert outcome.success is True and outcome.reward == 1.0


def test_checkout_errors_are_shown_and_a_wrong_order_fails(env):
    env.reset(TaskSpec("buy", 8))
    fields = env._shop_task.fields
    solve(env, "buy", fields)
    wrong = next(
        el for el in env.elements if el.role == "link" and el.name not in ("Home", "Account", "Cart (0)")
    )
    act(env, f"click {wrong.ref}")
    act(env, f"click {ref(env, 'button', 'Add to cart')}")
    act(env, f"click {ref(env, 'link', 'Proceed to checkout')}")
    page = act(env, f"click {ref(env, 'button', 'Place order')}")
    assert "Name is required." in page.observation and not page.done
    act(env, f"type {ref(env, 'textbox', 'Full name')} {json.dumps(fields['name'])}")
    act(env, f"type {ref(env, 'textbox', 'Email')} {json.dumps(fields['email'])}")
    act(env, f"type {ref(env, 'textbox', 'Shipping address')} {json.dumps(fields['address'])}")
    outcome = act(env, f"click {ref(env, 'button', 'Place order')}")
    target_in_cart = env._site.shop.orders[0].lines
    assert outcome.done
    assert outcome.success is env._shop_task.check(env._site.shop)
    assert target_in_cart  # an order was placed either way


def test_same_seed_same_task_and_page(env):
    a = env.reset(TaskSpec("buy", 3))
    first = env.admissible_actions()
    b = env.reset(TaskSpec("buy", 3))
    assert (a.instruction, a.observation, first) == (b.instruction, b.observation, env.admissible_actions())


def test_task_specs_cycle_through_templates(env):
    specs = env.task_specs(10, seed=1)
    assert {s.env_task for s in specs} == set(TEMPLATES)
    assert specs == env.task_specs(10, seed=1)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_the_oracle_follows_each_templates_solution_to_a_verified_success(env, template):
    from trajforge.synthesizers.policies import OraclePolicy
    from trajforge.synthesizers.rollout import rollout

    episode = rollout(env, TaskSpec(template, 17), OraclePolicy(), seed=0, max_steps=20, timeout_s=120)
    assert episode.success is True and episode.total_reward == 1.0, [s.action for s in episode.steps]
    assert env.walkthrough() is None  # done: nothing left to do
