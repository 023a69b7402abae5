"""The template source: the environment's goal forms with typed slots filled only from what the
instance holds. A slot the instance has no value for is a drop with its reason, never a random
fallback; the witness is the shortest prefix the instance's exploration archive knows."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from trajforge.environments.goals import PredicateKind, SlotAbsent, canonical_goal
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.explore import Archive


def from_templates(
    env: Any,
    archive: Archive,
    name: str,
    kinds: dict[str, PredicateKind],
    dropped: Counter,
    seed: int,
    per_template: int = 3,
    rejected: list[tuple[Candidate, str, str]] | None = None,
) -> list[Candidate]:
    """Up to `per_template` distinct goals per template of one instance (`env` just reset on it);
    goals dropped before verification go to `rejected` with their reason."""
    rng = random.Random(seed)
    values = env.slot_values()
    base = archive.base
    out: dict[tuple, Candidate] = {}
    for template, fill in sorted(env.goal_templates().items()):
        for _ in range(per_template * 3):
            if sum(1 for c in out.values() if c.generator == f"template:{template}") >= per_template:
                break
            try:
                goal = canonical_goal(fill(rng))
            except SlotAbsent:
                dropped[f"slot_absent:{template}"] += 1
                break
            absent = [
                v
                for f in goal
                for t, v in zip(kinds[f[0]].slots, f[1:], strict=True)
                if v not in values.get(t, [])
            ]
            if goal in out:
                continue
            cand = Candidate(name, base.env_task, base.seed, goal, f"template:{template}", "template")
            cell = None if absent else archive.holding(goal)
            if absent or cell is None:
                reason = f"slot_absent:{template}" if absent else "no_witness"
                dropped[reason] += 1
                if rejected is not None:
                    why = f"not in this instance: {absent}" if absent else "exploration never reached it"
                    rejected.append((cand, reason.split(":")[0], why))
                continue
            out[goal] = cand.but(witness=cell.prefix)
    return list(out.values())
