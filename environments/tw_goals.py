"""TextWorld's side of the goal contract (environments.goals): predicate kinds over the facts
TextWorld reports (`EnvInfos(facts=True)`), on an allowed list; other facts have no phrasing."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from trajforge.environments.goals import Fact, PredicateKind, SlotAbsent, Template

KINDS: tuple[PredicateKind, ...] = (
    PredicateKind(
        "carried", ("thing",), ("Take the {0}.", "Pick up the {0}.", "Get the {0} into your inventory.")
    ),
    PredicateKind("open", ("container",), ("Open the {0}.", "Make sure the {0} is open.")),
    PredicateKind("closed", ("container",), ("Close the {0}.", "Make sure the {0} is shut.")),
    PredicateKind("player_at", ("room",), ("Go to the {0}.", "Make your way to the {0}.")),
    PredicateKind("on", ("thing", "support"), ("Put the {0} on the {1}.", "Place the {0} onto the {1}.")),
    PredicateKind("in", ("thing", "container"), ("Put the {0} in the {1}.", "Place the {0} inside the {1}.")),
    PredicateKind("sliced", ("food",), ("Slice the {0}.", "Cut the {0} into slices.")),
    PredicateKind("chopped", ("food",), ("Chop the {0}.", "Cut the {0} into chunks.")),
    PredicateKind("diced", ("food",), ("Dice the {0}.", "Cut the {0} into small cubes.")),
    PredicateKind("fried", ("food",), ("Fry the {0}.", "Cook the {0} in a pan.")),
    PredicateKind("roasted", ("food",), ("Roast the {0}.", "Cook the {0} in the oven.")),
    PredicateKind("grilled", ("food",), ("Grill the {0}.", "Cook the {0} on the barbecue.")),
    PredicateKind("eaten", ("food",), ("Eat the {0}.", "Have the {0} for a meal.")),
)
_SLOT_OF_TYPE = {"r": "room", "c": "container", "s": "support", "f": "food"}
# Abstract variables of the recipe's bookkeeping, not things in the world.
_ABSTRACT = {"RECIPE", "ingredient"}


def _fact(prop: Any) -> Fact | None:
    args = [(v.name, v.type) for v in prop.arguments]
    if any(t in _ABSTRACT or t.startswith("ingredient") for _, t in args):
        return None
    name = prop.name
    if name == "at" and args and args[0][1] == "P":
        return ("player_at", args[1][0])
    if name == "in" and len(args) == 2 and args[1][1] == "I":
        return ("carried", args[0][0])
    if name == "at":  # where fixed things stand: never changes, no goal
        return ("located", *(a for a, _ in args))
    return (name, *(a for a, _ in args))


def facts(props: Iterable[Any]) -> frozenset[Fact]:
    return frozenset(f for f in map(_fact, props) if f is not None)


def slot_values(props: Iterable[Any]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {
        "thing": set(),
        "room": set(),
        "container": set(),
        "support": set(),
        "food": set(),
    }
    for prop in props:
        for v in prop.arguments:
            if v.type in _ABSTRACT or v.type.startswith("ingredient") or v.type in ("P", "I"):
                continue
            out["thing"].add(v.name)
            if v.type in _SLOT_OF_TYPE:
                out[_SLOT_OF_TYPE[v.type]].add(v.name)
            if v.type in ("oven", "stove"):
                out["container"].add(v.name)
    return {k: sorted(v) for k, v in out.items()}


def templates(props: Iterable[Any]) -> dict[str, Template]:
    """Goal forms filled from the game's facts at reset: what is there, cuttable, cookable..."""
    fs = facts(props)
    values = slot_values(props)

    def having(kind: str) -> list[str]:
        return sorted(f[1] for f in fs if f[0] == kind)

    def pick(items: list[str], what: str, rng: random.Random) -> str:
        if not items:
            raise SlotAbsent(f"{what}: none in this game")
        return rng.choice(items)

    cooker = {"oven": "roasted", "stove": "fried", "BBQ": "grilled"}

    def take(rng: random.Random) -> list[Fact]:
        return [("carried", pick([f for f in values["food"] if ("carried", f) not in fs], "food", rng))]

    def open_(rng: random.Random) -> list[Fact]:
        return [("open", pick(having("closed"), "closed container", rng))]

    def cut(rng: random.Random) -> list[Fact]:
        return [(rng.choice(["sliced", "chopped", "diced"]), pick(having("uncut"), "uncut food", rng))]

    def cook(rng: random.Random) -> list[Fact]:
        cookers = [c for c in cooker if c in values["thing"]]
        return [(cooker[pick(cookers, "cooker", rng)], pick(having("cookable"), "cookable food", rng))]

    def put(rng: random.Random) -> list[Fact]:
        food = pick(values["food"], "food", rng)
        supports = [s for s in values["support"] if ("on", food, s) not in fs]
        return [("on", food, pick(supports, "support", rng))]

    def eat(rng: random.Random) -> list[Fact]:
        return [("eaten", pick(having("edible"), "edible food", rng))]

    def take_and_open(rng: random.Random) -> list[Fact]:
        return take(rng) + open_(rng)

    return {
        "take": take,
        "open": open_,
        "cut": cut,
        "cook": cook,
        "put": put,
        "eat": eat,
        "take_and_open": take_and_open,
    }


def vocabulary() -> dict[str, list[str]]:
    """Slot values of any cooking game (the naive arm of bench/tasks.py draws from these)."""
    foods = ["red apple", "yellow potato", "tomato", "carrot", "red onion", "black pepper", "egg"]
    return {
        "thing": [*foods, "knife", "cookbook"],
        "food": foods,
        "room": ["kitchen", "pantry", "garden", "backyard"],
        "container": ["fridge", "oven", "toolbox"],
        "support": ["counter", "table", "shelf"],
    }
