"""A search's identity: the settings that decide its outcome (part of every id it produces)
and its seed."""

from __future__ import annotations

from typing import Any

from trajforge.schemas import ids
from trajforge.synthesizers.search.settings import MAX_OBSERVATION_CHARS, SearchSettings


def search_key(settings: SearchSettings) -> dict[str, Any]:
    """What decides a search's outcome; part of every id it produces (wall time is not)."""
    key: dict[str, Any] = {"search": settings.method, "max_steps": settings.max_steps}
    if settings.method != "rollout":
        key["budget"] = {"env_steps": settings.budget.env_steps, "simulations": settings.budget.simulations}
        if settings.budget.tokens is not None:  # only when set: ids of unbounded runs stay as they were
            key["budget"]["tokens"] = settings.budget.tokens
    if settings.method in ("best_of_n", "particle"):
        key["samples"] = settings.samples
    if settings.max_observation_chars != MAX_OBSERVATION_CHARS:  # ids of default runs stay as they were
        key["max_observation_chars"] = settings.max_observation_chars
    if settings.method == "mcts":
        m = settings.mcts
        key["mcts"] = {"expand_k": m.expand_k, "c_puct": m.c_puct, "rollout_depth": m.rollout_depth}
        if m.critic_weight > 0:  # only when used: ids of searches without a critic stay as they were
            key["mcts"] |= {"critic_weight": m.critic_weight, "critic": m.critic}
    if settings.method == "best_first":  # what it reads of the mcts settings
        m = settings.mcts
        key["best_first"] = {"expand_k": m.expand_k}
        if m.critic_weight > 0:
            key["best_first"] |= {"critic_weight": m.critic_weight, "critic": m.critic}
    if settings.method == "particle" and settings.mcts.critic_weight > 0:  # the particles' values
        key["critic"] = {"critic_weight": settings.mcts.critic_weight, "critic": settings.mcts.critic}
    return key


def search_seed(task_id: str, policy: str, settings: SearchSettings) -> int:
    """The seed of a (task, policy) search: the same wherever and whenever it runs."""
    return ids.search_seed(task_id, policy, search_key(settings))
