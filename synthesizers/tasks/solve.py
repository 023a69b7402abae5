"""The solve rate of a verified task: the configured search, from a fresh reset with the
instruction alone, `attempts` times; the share that reached the goal."""

from __future__ import annotations

from typing import Any

from trajforge.environments.base import TaskSpec
from trajforge.schemas.ids import content_id
from trajforge.synthesizers.search import SearchSettings, search
from trajforge.synthesizers.tasks.candidates import Candidate


def solve_rate(
    env: Any, cand: Candidate, policy: Any, settings: SearchSettings, attempts: int
) -> tuple[Candidate, int]:
    """(the candidate with solve_rate and attempts, environment steps spent)."""
    solved, steps = 0, 0
    task = TaskSpec(cand.env_task, cand.seed, cand.instruction)
    for attempt in range(attempts):
        seed = int(content_id("solve", task=cand.task_id, attempt=attempt)[:8], 16)
        result = search(env, task, policy, settings, seed)
        solved += any(p.success for p in result.paths)
        steps += result.env_steps
    return cand.but(solve_rate=solved / attempts if attempts else None, attempts=attempts), steps


def difficulty(rate: float | None, band: tuple[float, float]) -> str | None:
    if rate is None:
        return None
    return "hard" if rate < band[0] else "easy" if rate > band[1] else "moderate"
