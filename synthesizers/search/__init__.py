"""Trajectory search over any Environment: every method shares one entry point (`search`) and
one budget, so their comparisons are fair. A method is its module and one line in METHODS:

- `rollout`, `best_of_n` (best_of_n.py): independent episodes of the policy;
- `mcts` (mcts.py): Monte Carlo Tree Search as in Agent Q;
- `best_first` (best_first.py): A*-style best-first search as in ToolChain*.
- `particle` (particle.py): particle filtering (Puri et al.), N partial trajectories resampled by value.

The other modules: settings.py (what a search is given), results.py (what it returns),
navigator.py (stepping along action prefixes), identity.py (its key and seed), metering.py
(model usage and the token budget).
"""

from __future__ import annotations

from collections.abc import Callable

from trajforge.environments.base import Environment, TaskSpec
from trajforge.synthesizers.policies import Policy
from trajforge.synthesizers.search.best_first import run_best_first
from trajforge.synthesizers.search.best_of_n import sample_rollouts
from trajforge.synthesizers.search.identity import search_key, search_seed
from trajforge.synthesizers.search.mcts import MCTS, run_mcts
from trajforge.synthesizers.search.metering import TokenMeter, charge, usage
from trajforge.synthesizers.search.navigator import BudgetSpent, Navigator, Visit
from trajforge.synthesizers.search.particle import run_particles
from trajforge.synthesizers.search.results import Node, Path_, SearchResult, path_rank
from trajforge.synthesizers.search.settings import (
    MAX_OBSERVATION_CHARS,
    Branching,
    Budget,
    Critic,
    MCTSSettings,
    SearchSettings,
)

Method = Callable[[Environment, TaskSpec, Policy, SearchSettings, int, Critic | None], SearchResult]
METHODS: dict[str, Method] = {
    "rollout": sample_rollouts,
    "best_of_n": sample_rollouts,
    "mcts": run_mcts,
    "best_first": run_best_first,
    "particle": run_particles,
}
# The methods that weigh a critic's values (mcts.critic_weight).
CRITIC_METHODS = ("mcts", "best_first", "particle")


def consults_critic(settings: SearchSettings) -> bool:
    """Whether a search with these settings asks a critic, so a run must give it one."""
    m = settings.mcts
    return settings.method in CRITIC_METHODS and m.critic_weight > 0 and bool(m.critic)


def search(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,
) -> SearchResult:
    """`critic` is used by the methods of CRITIC_METHODS when settings.mcts.critic_weight > 0; its
    tokens count as the search's, like the policy's."""
    before = usage(policy, critic)
    result = METHODS[settings.method](env, task, policy, settings, seed, critic)
    charge(result, before, usage(policy, critic))
    return result


__all__ = [
    "MAX_OBSERVATION_CHARS",
    "MCTS",
    "METHODS",
    "Branching",
    "Budget",
    "BudgetSpent",
    "Critic",
    "MCTSSettings",
    "Method",
    "Navigator",
    "Node",
    "Path_",
    "SearchResult",
    "SearchSettings",
    "TokenMeter",
    "Visit",
    "consults_critic",
    "path_rank",
    "run_best_first",
    "run_mcts",
    "sample_rollouts",
    "search",
    "search_key",
    "search_seed",
]
