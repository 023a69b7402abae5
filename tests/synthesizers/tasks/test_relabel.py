"""Relabelling and the curriculum on a hand-made archive (no environment needed)."""

from __future__ import annotations

from collections import Counter

from trajforge.environments.base import TaskSpec
from trajforge.environments.goals import PredicateKind
from trajforge.synthesizers.tasks.curriculum import children
from trajforge.synthesizers.tasks.explore import Archive, Cell

KINDS = {
    "in_cart": PredicateKind(
        "in_cart", ("product",), ("Add the {0} to your cart.", "Put the {0} in your cart.")
    ),
    "not_in_cart": PredicateKind("not_in_cart", ("product",), ("Remove the {0}.", "Take the {0} out.")),
    "ordered": PredicateKind("ordered", ("product",), ("Buy the {0}.", "Order the {0}.")),
}
F0 = frozenset({("not_in_cart", "mug"), ("not_in_cart", "tote")})


def archive() -> Archive:
    a = Archive(TaskSpec("add_to_cart", 1))
    cells = [
        Cell((), F0),
        Cell(("a", "b"), frozenset({("in_cart", "mug"), ("not_in_cart", "tote"), ("seen", "x")})),
        Cell(("a", "b", "c"), frozenset({("in_cart", "mug"), ("in_cart", "tote")})),
        Cell(
            ("z", "b", "c", "d"), frozenset({("in_cart", "mug"), ("in_cart", "tote")})
        ),  # longer: not a witness
    ]
    a.cells = {str(i): c for i, c in enumerate(cells)}
    a.root = "0"
    a.trace = [
        (("a", "b"), cells[1].facts),
        (("a", "b", "r"), F0),  # removed the mug again: "not in cart" with a setup prefix
    ]
    return a


def test_changed_facts_become_goals_with_the_shortest_witness_and_undo_gets_a_setup():
    from trajforge.synthesizers.tasks.relabel import relabel

    dropped = Counter()
    cands = {c.goal: c for c in relabel(archive(), "webapp", KINDS, dropped, seed=0, limit=20)}
    assert cands[(("in_cart", "mug"),)].witness == ("a", "b")
    assert cands[(("in_cart", "tote"),)].witness == ("a", "b", "c")
    assert cands[(("in_cart", "mug"), ("in_cart", "tote"))].generator == "explore:pair"
    undo = cands[(("not_in_cart", "mug"),)]
    assert (undo.setup, undo.witness, undo.generator) == (("a", "b"), ("r",), "explore:undo")
    assert dropped == Counter({"no_phrasing:seen": 1})  # the coverage gap, counted
    assert len(relabel(archive(), "webapp", KINDS, Counter(), seed=0, limit=2)) == 2


def test_curriculum_children_carry_their_parent():
    from trajforge.synthesizers.tasks.relabel import relabel

    pair = next(c for c in relabel(archive(), "webapp", KINDS, Counter(), 0, 20) if len(c.goal) == 2)
    easier = children(pair.but(solve_rate=0.0), (0.05, 0.75), archive(), KINDS)
    assert {c.generator for c in easier} == {"curriculum:drop_conjunct", "curriculum:nearer_start"}
    assert all(c.parent_task_id == pair.task_id and c.source == "curriculum" for c in easier)
    nearer = next(c for c in easier if c.generator == "curriculum:nearer_start")
    assert nearer.setup + nearer.witness == pair.witness and nearer.setup
    single = next(
        c for c in relabel(archive(), "webapp", KINDS, Counter(), 0, 20) if c.goal == (("in_cart", "mug"),)
    )
    harder = children(single.but(solve_rate=1.0), (0.05, 0.75), archive(), KINDS)
    assert [(c.generator, c.goal) for c in harder] == [
        ("curriculum:add_conjunct", (("in_cart", "mug"), ("in_cart", "tote")))
    ]
    assert children(single.but(solve_rate=0.5), (0.05, 0.75), archive(), KINDS) == []
