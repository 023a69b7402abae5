"""Relabelling (OS-Genesis, NNetNav): every fact an exploration changed becomes a candidate goal,
alone and in pairs achieved together; a fact that held at reset, was lost and came back becomes
a goal with a setup prefix (add-then-remove gives "not in cart"). The witness is the shortest
prefix the archive knows. A changed fact whose kind has no phrasing is a counted drop."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from trajforge.environments.goals import Fact, PredicateKind, canonical_goal
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.explore import Archive


def relabel(
    archive: Archive,
    env: str,
    kinds: dict[str, PredicateKind],
    dropped: Counter,
    seed: int,
    limit: int = 12,
) -> list[Candidate]:
    """At most `limit` candidates of one instance, taken round-robin over predicate kinds so that
    one kind (say, every price bound a cart total passes at once) cannot crowd out the others."""
    base, f0 = archive.base, archive.reset_facts
    live = [c for c in archive.cells.values() if not c.lost]
    gained: set[Fact] = set().union(*(c.facts - f0 for c in live)) if live else set()
    for fact in sorted(gained):
        if fact[0] not in kinds:
            dropped[f"no_phrasing:{fact[0]}"] += 1
    phrased = sorted(f for f in gained if f[0] in kinds)
    found: dict[tuple, Candidate] = {}

    def add(goal: tuple[Fact, ...], setup: tuple[str, ...], witness: tuple[str, ...], how: str) -> None:
        g = canonical_goal(goal)
        if g not in found and witness:
            found[g] = Candidate(
                env, base.env_task, base.seed, g, f"explore:{how}", "explored", setup, witness
            )

    for fact in phrased:
        cell = archive.holding((fact,))
        if cell is not None:
            add((fact,), (), cell.prefix, "novelty")
    pairs = set()
    for cell in live:
        mine = [f for f in phrased if f in cell.facts]
        pairs.update(p for p in itertools.combinations(mine, 2) if p[0][1:2] != p[1][1:2])
    for pair in sorted(pairs):
        cell = archive.holding(pair)
        if cell is not None:
            add(pair, (), cell.prefix, "pair")
    # Facts of the reset state lost along a path and regained further down the same path.
    for fact in sorted(f for f in f0 if f[0] in kinds):
        best = None
        for gone_path, gone_facts in archive.trace:
            if fact in gone_facts:
                continue
            for path, facts in archive.trace:
                if fact in facts and len(path) > len(gone_path) and path[: len(gone_path)] == gone_path:
                    key = (len(path) - len(gone_path), len(gone_path), path)
                    if best is None or key < best[0]:
                        best = (key, gone_path, path[len(gone_path) :])
        if best is not None:
            add((fact,), best[1], best[2], "undo")
    return _round_robin(list(found.values()), limit, random.Random(seed))


def _round_robin(cands: list[Candidate], limit: int, rng: random.Random) -> list[Candidate]:
    by_kind: dict[str, list[Candidate]] = {}
    for c in cands:
        by_kind.setdefault("+".join(f[0] for f in c.goal), []).append(c)
    for group in by_kind.values():
        rng.shuffle(group)
    out: list[Candidate] = []
    while len(out) < limit and any(by_kind.values()):
        for key in sorted(by_kind):
            if by_kind[key] and len(out) < limit:
                out.append(by_kind[key].pop())
    return out
