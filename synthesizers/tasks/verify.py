"""Verification of a candidate, each failure a counted drop, in this order: the goal already
holds at reset (trivial); the witness replayed in a fresh instance does not reach it
(unreplayable); the witness passes a state the environment calls lost (lost_state); the text fits
more than one goal on the instance (ambiguous); a slot value is missing from the text
(unfaithful). The replay trims the witness to the shortest prefix that reaches the goal."""

from __future__ import annotations

import itertools
from typing import Any

from trajforge.environments import goals
from trajforge.environments.base import EnvironmentFailure, TaskSpec
from trajforge.environments.goals import Fact, PredicateKind
from trajforge.synthesizers.tasks.candidates import Candidate


def verify(env: Any, cand: Candidate, minimize: bool = False) -> tuple[Candidate, str | None, str]:
    """(the candidate with its instruction and trimmed witness, drop reason or None, detail).
    `env` is a goal-wrapped environment of its own (not the one that explored). `minimize` drops
    witness actions the goal does not need (one replay per action: for cheap environments)."""
    try:
        reset = env.reset(TaskSpec(cand.env_task, cand.seed, cand.instruction))
    except EnvironmentFailure as exc:
        return cand, "setup_failed" if exc.reason == "setup_failed" else "unreplayable", str(exc)
    cand = cand.but(instruction=reset.instruction)
    if not cand.instruction:
        return cand, "no_phrasing", "a kind of the goal has no phrasing"
    if goals.goal_holds(env, cand.goal):
        return cand, "trivial", "the goal holds at reset"
    reached = None
    for i, action in enumerate(cand.witness):
        if action not in env.admissible_actions():
            return cand, "unreplayable", f"witness step {i} {action!r} is not admissible"
        outcome = env.step(action)
        if outcome.success:
            reached = i + 1
            break
        if outcome.done:
            break
    if reached is None:
        return cand, "unreplayable", "the witness does not reach the goal in a fresh instance"
    if env.lost:
        return cand, "lost_state", "the witness passes a lost state"
    cand = cand.but(witness=cand.witness[:reached])
    if minimize:
        cand = _minimize(env, cand)
    kinds = goals.kinds_of(env)
    clash = ambiguity(kinds, cand, env.slot_values())
    if clash:
        return cand, "ambiguous", f"the text also fits {clash}"
    missing = [v for v in cand.values() if v.lower() not in cand.instruction.lower()]
    if missing:
        return cand, "unfaithful", f"missing from the text: {missing}"
    return cand, None, ""


def _reaches(env: Any, cand: Candidate, witness: tuple[str, ...]) -> int | None:
    """How many actions of `witness` reach the goal from a fresh reset without a lost state."""
    env.reset(TaskSpec(cand.env_task, cand.seed, cand.instruction))
    for i, action in enumerate(witness):
        if action not in env.admissible_actions():
            return None
        outcome = env.step(action)
        if outcome.success:
            return None if env.lost else i + 1
        if outcome.done:
            return None
    return None


def _minimize(env: Any, cand: Candidate) -> Candidate:
    witness, i = cand.witness, 0
    while i < len(witness):
        trial = witness[:i] + witness[i + 1 :]
        n = _reaches(env, cand, trial) if trial else None
        if n is not None:
            witness = trial[:n]
        else:
            i += 1
    return cand.but(witness=witness)


def ambiguity(kinds: dict[str, PredicateKind], cand: Candidate, values: dict[str, list[str]]) -> Fact | None:
    """Another fact on the instance whose phrasing is a sentence of the text, if any: the text then
    names a different goal too."""
    text = cand.instruction.lower()
    mentioned = {t: [v for v in vs if v and v.lower() in text] for t, vs in values.items()}
    for kind in kinds.values():
        pools = [mentioned.get(t, []) for t in kind.slots]
        for combo in itertools.product(*pools):
            fact = (kind.name, *combo)
            if fact in cand.goal:
                continue
            for phrasing in kind.phrasings:
                sentence = phrasing.format(*combo).rstrip(".").lower()
                if _is_sentence_of(sentence, text):
                    return fact
    return None


def _is_sentence_of(sentence: str, text: str) -> bool:
    """Whether `sentence` is one whole clause of the rendered conjunction `text`."""
    clauses = [c.strip().rstrip(".") for part in text.split(", ") for c in part.split(" and ")]
    return sentence in clauses or sentence == text.rstrip(".")
