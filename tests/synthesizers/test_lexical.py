"""The lexical policy: priors from the words an action shares with the task, no model."""

from __future__ import annotations

import os

import pytest

from trajforge.environments.base import TaskSpec
from trajforge.flows.config import load_config
from trajforge.synthesizers.lexical import LexicalPolicy
from trajforge.synthesizers.policies import Context, RandomPolicy, make_policy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search


def page(instruction: str, *elements: str) -> str:
    """An observation as the browser environments write it."""
    lines = ["URL: /task.html", "Title: Task", "", f"- text: {instruction}", "", "Interactive elements:"]
    return "\n".join([*lines, *elements])


def priors(instruction: str, observation: str, actions: list[str]) -> dict[str, float]:
    return LexicalPolicy().priors(Context(None, instruction, observation, actions))  # type: ignore[arg-type]


def best(p: dict[str, float]) -> str:
    return max(p, key=lambda a: p[a])


def assert_uniform(p: dict[str, float], actions: list[str]) -> None:
    assert max(p[a] for a in actions) == pytest.approx(min(p[a] for a in actions))


def test_the_button_the_instruction_names_gets_the_highest_prior_and_the_others_share_the_rest():
    instruction = 'Click on the "Submit" button.'
    obs = page(
        instruction,
        '[e1] button "Cancel"',
        '[e2] button "Submit"',
        '[e3] button "Ok"',
        '[e4] button "Previous"',
        '[e5] clickable "lorem"',
    )
    actions = [f"click e{i}" for i in range(1, 6)]
    p = priors(instruction, obs, actions)
    assert best(p) == "click e2" and p["click e2"] > 0.5
    assert_uniform(p, ["click e1", "click e3", "click e4"])  # the role word alone tells little
    assert sum(p.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in p.values())  # every action keeps some mass


def test_typing_the_quoted_value_comes_first_then_submit_once_the_field_holds_it():
    instruction = 'Enter "Jerald" into the text field and press Submit.'
    actions = ["click e1", 'type e1 "Jerald"', "click e2", "click e3", 'press "Enter"']
    empty = page(
        instruction, '[e1] textbox value="" (focused)', '[e2] button "Submit"', '[e3] button "Cancel"'
    )
    p = priors(instruction, empty, actions)
    assert best(p) == 'type e1 "Jerald"' and p['type e1 "Jerald"'] > 0.5
    assert p["click e2"] > p["click e1"] == pytest.approx(p["click e3"]) == pytest.approx(p['press "Enter"'])
    assert sum(p.values()) == pytest.approx(1.0)
    typed = page(instruction, '[e1] textbox value="Jerald"', '[e2] button "Submit"', '[e3] button "Cancel"')
    after = priors(instruction, typed, actions)
    assert best(after) == "click e2"  # typing again would change nothing


def test_a_checked_box_the_instruction_names_is_not_clicked_again():
    instruction = "Select kLg, 5ft and click Submit."
    actions = ["click e1", "click e2", "click e3", "click e4"]
    obs = page(
        instruction,
        '[e1] checkbox "kLg" checked',
        '[e2] checkbox "5ft" unchecked',
        '[e3] checkbox "USa" unchecked',
        '[e4] button "Submit"',
    )
    p = priors(instruction, obs, actions)
    assert best(p) == "click e2"  # named earlier than Submit, and not yet checked
    assert p["click e4"] > p["click e1"] == pytest.approx(p["click e3"])


def test_selecting_the_named_option_comes_first():
    instruction = "Select Bobine from the list and click Submit."
    options = ["Aurora", "Bobine", "Lorri"]
    obs = page(
        instruction, '[e1] select value="Aurora" options: "Aurora", "Bobine", "Lorri"', '[e2] button "Submit"'
    )
    actions = [f'select e1 "{o}"' for o in options] + ["click e2"]
    p = priors(instruction, obs, actions)
    assert best(p) == 'select e1 "Bobine"'
    assert p["click e2"] > p['select e1 "Lorri"']


def test_a_text_game_favours_what_the_objective_names_then_what_the_room_shows():
    instruction = (
        "You are hungry! Let's cook a delicious meal. Check the cookbook in the kitchen for the recipe. "
        "Once done, enjoy your meal!"
    )
    obs = "-= Kitchen =-\nYou see a fridge. On the counter you see a knife and a cookbook."
    actions = [
        "examine cookbook",
        "open fridge",
        "take knife from counter",
        "go east",
        "go west",
        "inventory",
    ]
    p = priors(instruction, obs, actions)
    assert best(p) == "examine cookbook"
    assert p["open fridge"] > p["go east"]  # what the room shows, weighted below the objective
    assert p["examine cookbook"] > p["take knife from counter"]
    assert_uniform(p, ["go east", "go west", "inventory"])
    assert sum(p.values()) == pytest.approx(1.0)


def test_choices_follow_the_priors_and_repeat_for_a_seed():
    instruction = 'Click on the "Submit" button.'
    obs = page(instruction, '[e1] button "Cancel"', '[e2] button "Submit"', '[e3] button "Ok"')
    ctx = Context(None, instruction, obs, ["click e1", "click e2", "click e3"])  # type: ignore[arg-type]
    policy = make_policy("lexical")
    assert isinstance(policy, LexicalPolicy) and policy.spec == "lexical"

    def choices(seed: int) -> list[str]:
        policy.start(seed)
        return [policy.act(ctx).action for _ in range(200)]

    first = choices(3)
    assert first == choices(3) != choices(4)
    assert first.count("click e2") > 100 and set(first) == set(ctx.admissible)
    assert load_config(policies=["lexical"]).policies == ["lexical"]  # the config takes the spec


def test_choices_do_not_depend_on_the_order_the_environment_lists_its_actions_in():
    instruction = 'Click on the "Submit" button.'
    obs = page(instruction, '[e1] button "Cancel"', '[e2] button "Submit"', '[e3] button "Ok"')
    listed = ["click e1", "click e2", "click e3"]

    def choices(admissible: list[str]) -> list[str]:
        policy = LexicalPolicy()
        policy.start(5)
        ctx = Context(None, instruction, obs, admissible)  # type: ignore[arg-type]
        return [policy.act(ctx).action for _ in range(50)]

    assert choices(listed) == choices(listed[::-1])


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Chromium at /usr/bin/chromium")
@pytest.mark.parametrize("task", ["click-button", "enter-text"])
def test_mcts_with_lexical_priors_solves_easy_miniwob_tasks_where_a_uniform_prior_does_not(task):
    pytest.importorskip("playwright")
    pytest.importorskip("miniwob")
    from trajforge.environments.miniwob import MiniWoBEnvironment

    env = MiniWoBEnvironment(tasks=[task])
    # MiniWoB's run defaults, on a budget of 6 env steps.
    mcts = MCTSSettings(rollout_depth=3, c_puct=1.0)
    settings = SearchSettings("mcts", max_steps=6, budget=Budget(env_steps=6), mcts=mcts)
    uniform_failed = 0
    try:
        for seed in (1, 2, 3):
            result = search(env, TaskSpec(task, seed), LexicalPolicy(), settings, seed=seed)
            assert result.paths[0].success, (task, seed, result.instruction, result.paths[0].key)
            assert result.env_steps <= 6
            uniform = search(env, TaskSpec(task, seed), RandomPolicy(), settings, seed=seed)
            uniform_failed += not uniform.paths[0].success
    finally:
        env.close()
    assert uniform_failed  # the same budget is too small for a uniform prior on some seed
