"""Verification's drops on a real TextWorld game, each with its reason, and the text checks."""

from __future__ import annotations

import pytest

from trajforge.environments import goals
from trajforge.environments.goals import PredicateKind
from trajforge.environments.textworld import TextWorldEnvironment
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.verify import ambiguity, verify

BASE = "tw-cooking/recipe=1,take=1,go=1,open=1,cook=1,cut=1/seed=1022050301"


@pytest.fixture(scope="module")
def env():
    e = goals.wrap(TextWorldEnvironment(options={"cut": True, "cook": True, "open": True}))
    yield e
    e.close()


def cand(goal, witness, setup=()) -> Candidate:
    return Candidate(
        "textworld", BASE, 1022050301, tuple(goal), "explore:novelty", "explored", setup, witness
    )


def test_each_failure_is_dropped_with_its_reason_in_order(env):
    ok, reason, _ = verify(
        env, cand([("carried", "tomato")], ("look", "take tomato from counter")), minimize=True
    )
    assert reason is None and ok.witness == ("take tomato from counter",) and "tomato" in ok.instruction
    assert verify(env, cand([("player_at", "kitchen")], ("look",)))[1] == "trivial"
    assert verify(env, cand([("carried", "tomato")], ("look",)))[1] == "unreplayable"
    assert verify(env, cand([("carried", "tomato")], ("fly away",)))[1] == "unreplayable"
    assert verify(env, cand([("carried", "tomato")], ("look",), setup=("fly away",)))[1] == "setup_failed"
    assert verify(env, cand([("raw", "tomato"), ("carried", "tomato")], ("take tomato from counter",)))[
        1
    ] == ("no_phrasing")


def test_text_that_fits_another_goal_is_ambiguous_and_a_missing_value_unfaithful():
    kinds = {
        "in": PredicateKind(
            "in", ("thing", "box"), ("Put the {0} in the {1}.", "Place the {0} inside the {1}.")
        ),
        "stored": PredicateKind("stored", ("thing",), ("Put the {0} in the fridge.", "Store the {0}.")),
    }
    values = {"thing": ["tomato"], "box": ["fridge", "oven"]}
    c = cand([("in", "tomato", "fridge")], ("x",)).but(instruction="Put the tomato in the fridge.")
    assert ambiguity(kinds, c, values) == ("stored", "tomato")
    c = cand([("in", "tomato", "oven")], ("x",)).but(instruction="Put the tomato in the oven.")
    assert ambiguity(kinds, c, values) is None
