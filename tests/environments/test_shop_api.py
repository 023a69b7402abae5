"""shop-api: the shop's operations as tools over the same state and checkers as the browser shop;
calls are validated against their JSON schemas; invalid calls are invalid actions, not crashes."""

from __future__ import annotations

import json

import pytest

from trajforge.environments import registry
from trajforge.environments.base import TaskSpec
from trajforge.environments.webapp.shop import Shop
from trajforge.environments.webapp.tasks import TEMPLATES, make_task
from trajforge.schemas.toolcalls import decode_call, encode_call


@pytest.fixture
def env():
    e = registry.make("shop-api")
    yield e
    e.close()


def test_tools_are_declared_in_openai_function_format(env):
    names = [t["function"]["name"] for t in env.tools]
    assert {"search_products", "get_product", "add_to_cart", "checkout", "update_account"} <= set(names)
    for tool in env.tools:
        assert tool["type"] == "function" and tool["function"]["parameters"]["type"] == "object"


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_the_walkthrough_of_every_template_passes_its_checker(env, template):
    env.reset(TaskSpec(template, 4))
    outcome = None
    for action in env.walkthrough():
        outcome = env.step(action)
    assert outcome.done and outcome.success and outcome.info == {"checker": "passed"}
    # the checker of a task made afresh from the same template and seed agrees, on the same state
    assert make_task(template, Shop.seeded(4), 4).check(env.shop)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            encode_call("add_to_cart", {"product_id": 0}),
            "arguments.product_id: 0 is less than the minimum of 1",
        ),
        (encode_call("checkout", {"name": "Ana"}), "'email' is a required property"),
        (encode_call("search_products", {"colour": "red"}), "'colour' was unexpected"),
        (encode_call("search_products", {"category": "toys"}), "'toys' is not one of"),
        (encode_call("teleport", {}), "no tool named 'teleport'"),
        ("buy the red boots", "not a JSON tool call"),
        ('{"name": "view_cart", "arguments": [1]}', "arguments: must be a JSON object"),
    ],
)
def test_an_invalid_call_is_an_invalid_action_with_the_validation_message(env, action, message):
    env.reset(TaskSpec("buy", 2))
    before = (dict(env.shop.cart), list(env.shop.orders))
    outcome = env.step(action)
    assert message in outcome.observation and outcome.observation.startswith("Invalid tool call:")
    assert not outcome.done and outcome.reward == 0.0 and outcome.info["invalid_action"]
    assert (env.shop.cart, env.shop.orders) == before  # nothing changed
    assert env.walkthrough() is None  # the episode left the known solution


def test_arguments_may_come_as_a_json_string_as_openai_sends_them(env):
    env.reset(TaskSpec("add_to_cart", 1))
    product = next(p for p in env.shop.products if p.stock)
    action = json.dumps({"name": "get_product", "arguments": json.dumps({"product_id": product.pid})})
    assert json.loads(env.step(action).observation)["name"] == product.name


def test_a_wrong_order_ends_the_episode_as_a_failure(env):
    env.reset(TaskSpec("buy", 3))
    fields = make_task("buy", Shop.seeded(3), 3).fields
    wrong = next(p for p in env.shop.products if p.stock and p.kind != fields["query"])
    env.step(encode_call("add_to_cart", {"product_id": wrong.pid}))
    contact = {k: fields[k] for k in ("name", "email", "address")}
    outcome = env.step(encode_call("checkout", contact))
    assert outcome.done and outcome.success is False and env.admissible_actions() == []


def test_admissible_calls_are_valid_and_a_snapshot_restores_the_state(env):
    env.reset(TaskSpec("buy", 5))
    state = env.snapshot()
    for action in env.admissible_actions():
        assert not env.step(action).observation.startswith("Invalid"), decode_call(action)
        env.restore(state)
    assert env.shop.cart == {} and env.shop.orders == []
    env.step(env.walkthrough()[0])  # a search by the task's words shows the products to pick from
    assert any(decode_call(a).name == "add_to_cart" for a in env.admissible_actions())


@pytest.mark.slow
def test_the_same_task_succeeds_by_browser_and_by_api_with_the_same_checker(env):
    from trajforge.environments.webapp.environment import WebAppEnvironment

    task = TaskSpec("buy", 8)
    outcomes = []
    browser = WebAppEnvironment()
    try:
        for agent in (browser, env):
            reset = agent.reset(task)
            outcome = None
            while (plan := agent.walkthrough()) and not (outcome and outcome.done):
                outcome = agent.step(plan[0])
            outcomes.append((reset.instruction, outcome.success, outcome.info.get("checker")))
    finally:
        browser.close()
    assert outcomes[0] == outcomes[1] and outcomes[0][1:] == (True, "passed")
