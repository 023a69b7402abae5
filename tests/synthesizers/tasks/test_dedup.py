"""Dedup layers and decontamination on minimal pairs (one slot apart: kept apart) and paraphrases
of one goal (capped). The embedding layer is exercised with the real MiniLM in bench/tasks.py."""

from __future__ import annotations

import json

import pytest

from trajforge.schemas.errors import ConfigError
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.dedup import dedup, load_eval_set, normalize, shingles


def cand(text: str, goal, seed: int = 1, setup=()) -> Candidate:
    return Candidate(
        "webapp",
        "add_to_cart",
        seed,
        tuple(goal),
        "explore:novelty",
        "explored",
        tuple(setup),
        ("click e1",),
        instruction=text,
    )


def run(cands, **kw):
    dropped = []
    kept = dedup(cands, lambda c, reason, detail: dropped.append((c.instruction, reason)), **kw)
    return [c.instruction for c in kept], dropped


MINIMAL = [
    cand("Add the red kettle to your cart.", [("in_cart", "red kettle")]),
    cand("Add the blue kettle to your cart.", [("in_cart", "blue kettle")]),
    cand("Fill your cart so that its total is at most $50.", [("cart_total_at_most", "50")]),
    cand("Fill your cart so that its total is at most $75.", [("cart_total_at_most", "75")]),
]


def test_minimal_pairs_stay_two_tasks():
    kept, dropped = run(MINIMAL)
    assert len(kept) == 4 and dropped == []
    assert shingles("at most $50") != shingles("at most $75")  # MinHash sees the slot
    assert normalize("at most $50.") == normalize("at most $75")  # the text cap does not


def test_ids_goals_text_cap_and_near_duplicates_are_dropped_with_their_reason():
    goal = [("ordered", "red kettle"), ("order_email", "kim4@example.org")]
    text = (
        "Place an order that includes the red kettle and check out using the email address kim4@example.org."
    )
    cands = [
        cand(text, goal, seed=1),
        cand(text.replace("Place", "PLACE"), goal, seed=1),  # the same task id
        cand(text, goal, seed=1, setup=("click e2",)),  # the same (instance, goal), another start
        cand(text, goal, seed=2),
        cand(text, goal, seed=3),
        cand(text, goal, seed=4),  # a 4th instance with this text: over the cap
        cand("Please p" + text[1:], goal, seed=5),  # reads alike, same goal: over the cap
        cand(text.replace("red kettle", "blue kettle"), [("ordered", "blue kettle"), goal[1]], seed=5),
    ]
    kept, dropped = run(cands, text_cap=3)
    assert kept == [text] * 3 + [text.replace("red kettle", "blue kettle")]
    assert [r for _, r in dropped] == ["duplicate_id", "duplicate_goal", "text_cap", "near_duplicate"]


def test_decontamination_drops_exact_near_and_same_goal(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(
        json.dumps({"instruction": "add the RED kettle to your cart"})
        + "\n"
        + json.dumps({"instruction": "something else", "goal": [["cart_total_at_most", "50"]]})
        + "\n"
        + "Fill your cart so that its total is at most $75 please.\n"
    )
    kept, dropped = run(MINIMAL, eval_set=load_eval_set(path))
    assert kept == ["Add the blue kettle to your cart."]
    assert sorted(r for _, r in dropped) == ["contaminated"] * 3


def test_an_unreadable_eval_set_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="decontaminate: cannot read"):
        load_eval_set(tmp_path / "missing.jsonl")
