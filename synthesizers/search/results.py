"""What a search returns: the paths it found (best first), its tree, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from trajforge.schemas.records import Step
from trajforge.synthesizers.rollout import Episode


@dataclass
class Path_:
    """A sequence of steps found by a search, ending in `success` (None: not terminal)."""

    steps: list[Step]
    total_reward: float
    success: bool | None
    final_observation: str
    stop_reason: str
    key: tuple[str, ...] = ()  # the actions, the path's identity
    sample: int = 0  # which of a best_of_n's samples this is
    screenshots: dict[int, bytes] = field(default_factory=dict)  # the page before step i

    @classmethod
    def from_episode(cls, ep: Episode, sample: int) -> Path_:
        key = tuple(s.action for s in ep.steps)
        return cls(
            ep.steps,
            ep.total_reward,
            ep.success,
            ep.final_observation,
            ep.stop_reason,
            key,
            sample,
            ep.screenshots,
        )


@dataclass
class Node:
    path: tuple[str, ...]
    parent: Node | None
    prior: float
    reward: float = 0.0  # reward of the step that entered this node
    terminal: bool = False
    success: bool | None = None
    observation: str = ""
    admissible: list[str] = field(default_factory=list)
    stepped: bool = False
    visits: int = 0
    value_sum: float = 0.0  # sum of returns after this node
    children: list[Node] | None = None
    critic: float | None = None  # the critic's value of the action that leads here

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def action(self) -> str | None:
        return self.path[-1] if self.path else None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def q(self) -> float:
        """The value of the action that leads here: its reward plus what follows."""
        return self.reward + self.value


@dataclass
class SearchResult:
    paths: list[Path_]  # best first
    nodes: list[Node] = field(default_factory=list)
    env_steps: int = 0
    simulations: int = 0
    wall_s: float = 0.0
    instruction: str = ""
    stop_reason: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cached_calls: int = 0
    cached_tokens_in: int = 0  # usage answered from the request cache: paid before, not now
    cached_tokens_out: int = 0
    cached_cost_usd: float = 0.0  # what those answers cost when they were paid
    root: Node | None = None  # the search tree, for MCTS


def path_rank(p: Path_) -> tuple:
    """Successes first, then by reward, then the shortest; ties broken by the actions."""
    return (not p.success, -p.total_reward, len(p.steps), p.key)
