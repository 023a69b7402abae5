"""What a search is given: its method, its per-task budget, MCTS's knobs, and the critic it may
consult. The run config (flows/run_config.py) maps its fields onto these by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trajforge.schemas.kinds import SearchMethod

Branching = Literal["auto", "snapshot", "replay"]
MAX_OBSERVATION_CHARS = 20_000  # an observation's cap, as the run config's default
# The methods that step from action prefixes (navigator.py): they restore the environment's
# snapshots or replay the prefix, as mcts.branching says.
BRANCHING_METHODS: tuple[SearchMethod, ...] = ("mcts", "best_first", "particle")


@dataclass(frozen=True)
class Budget:
    """Per task. Every method stops at the first limit it reaches."""

    env_steps: int = 400
    simulations: int = 10_000
    wall_s: float = 300.0
    # Model tokens (in + out, priors included; answers from the request cache count as they did when
    # paid, so a replayed search stops where the original did); None: no limit.
    tokens: int | None = None


@dataclass(frozen=True)
class MCTSSettings:
    expand_k: int = 32
    c_puct: float = 0.5
    rollout_depth: int = 1
    branching: Branching = "auto"
    critic_weight: float = 0.0  # w of the critic's values in selection (0: no critic)
    critic: str | None = None  # the critic's model spec (part of the search's identity)


class Critic(Protocol):
    """Values in [0, 1] for a node's candidate actions ({}: no opinion); validators.critic."""

    client: Any

    def values(self, instruction: str, observation: str, actions: list[str]) -> dict[str, float]: ...


@dataclass(frozen=True)
class SearchSettings:
    method: SearchMethod = "rollout"
    max_steps: int = 40
    samples: int = 1
    budget: Budget = field(default_factory=Budget)
    mcts: MCTSSettings = field(default_factory=MCTSSettings)
    max_observation_chars: int = MAX_OBSERVATION_CHARS  # longer ones are cut where they enter
