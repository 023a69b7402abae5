"""A curriculum from solve rates (WebRL, AgentGen): a task below the band gets easier children
(drop a conjunct; start nearer the goal, the witness's first half becoming setup), a task above
it harder ones (add a conjunct the archive reached together with the goal; start earlier, the
setup's tail becoming witness). Children carry their parent and are verified like any candidate."""

from __future__ import annotations

from trajforge.environments.goals import PredicateKind, canonical_goal
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.explore import Archive


def children(
    task: Candidate, band: tuple[float, float], archive: Archive | None, kinds: dict[str, PredicateKind]
) -> list[Candidate]:
    rate = task.solve_rate
    if rate is None or band[0] <= rate <= band[1]:
        return []
    kid = dict(
        source="curriculum", parent_task_id=task.task_id, instruction="", solve_rate=None, attempts=None
    )
    out: list[Candidate] = []
    if rate < band[0]:
        if len(task.goal) > 1:
            for i in range(len(task.goal)):
                goal = task.goal[:i] + task.goal[i + 1 :]
                out.append(task.but(goal=goal, generator="curriculum:drop_conjunct", **kid))
        if len(task.witness) > 1:
            half = len(task.witness) // 2
            out.append(
                task.but(
                    setup=task.setup + task.witness[:half],
                    witness=task.witness[half:],
                    generator="curriculum:nearer_start",
                    **kid,
                )
            )
    else:
        if task.setup:
            half = len(task.setup) // 2
            out.append(
                task.but(
                    setup=task.setup[:half],
                    witness=task.setup[half:] + task.witness,
                    generator="curriculum:earlier_start",
                    **kid,
                )
            )
        if archive is not None and not task.setup:
            extra = _conjunct(task, archive, kinds)
            if extra is not None:
                out.append(extra.but(generator="curriculum:add_conjunct", **kid))
    return out


def _conjunct(task: Candidate, archive: Archive, kinds: dict[str, PredicateKind]) -> Candidate | None:
    """The goal plus one more phrased fact that changed, reached together with it soonest."""
    best = None
    f0 = archive.reset_facts
    for cell in archive.cells.values():
        if cell.lost or not set(task.goal) <= cell.facts:
            continue
        for fact in sorted(cell.facts - f0 - set(task.goal)):
            if fact[0] in kinds and all(fact[1:2] != g[1:2] for g in task.goal):
                key = (len(cell.prefix), fact)
                if best is None or key < best[0]:
                    best = (key, fact, cell.prefix)
    if best is None:
        return None
    return task.but(goal=canonical_goal((*task.goal, best[1])), witness=best[2])
