"""The kinds of the data contract, each declared once. The records' fields, the run config, the
CLI's choices and the gate's value sets all derive from these Literals."""

from __future__ import annotations

from typing import Any, Literal, get_args

SearchMethod = Literal["rollout", "best_of_n", "mcts", "best_first", "particle"]
TaskSource = Literal["env", "template", "explored", "curriculum", "model"]
# A synthesized task's difficulty, from its solve rate against the curriculum's band.
Difficulty = Literal["easy", "moderate", "hard"]
# What became of a synthesized candidate (task_candidates.status).
CandidateStatus = Literal["kept", "dropped"]
PairSource = Literal["mcts_sibling", "trajectory", "revision"]


def values(kind: Any) -> tuple[str, ...]:
    """The values of a Literal kind, in declaration order: values(SearchMethod)[0] == "rollout"."""
    return get_args(kind)
