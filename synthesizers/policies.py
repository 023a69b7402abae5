"""Policies choose the next action. A policy is built from a SPEC string (see `make_policy`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trajforge.environments.base import Environment
from trajforge.inference.specs import parse_spec


@dataclass
class Decision:
    action: str
    thought: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass
class Context:
    """What a policy sees at one step."""

    env: Environment
    instruction: str
    observation: str
    admissible: list[str]
    history: list[dict] = field(default_factory=list)


class Policy(Protocol):
    spec: str

    def start(self, seed: int) -> None:
        """Begin an episode; all randomness derives from the seed."""

    def act(self, ctx: Context) -> Decision: ...


def sample(priors: Mapping[str, float], rng: random.Random) -> str:
    """An action drawn with probability proportional to its weight (weights need not sum to 1),
    over the actions in the mapping's order: the same seed, priors and order give the same draw."""
    actions = list(priors)
    return rng.choices(actions, weights=[priors[a] for a in actions])[0]


class RandomPolicy:
    """Uniform over the admissible actions."""

    spec = "random"

    def __init__(self) -> None:
        self._rng = random.Random(0)

    def start(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def act(self, ctx: Context) -> Decision:
        if not ctx.admissible:
            raise ValueError("no admissible action to choose from")
        return Decision(self._rng.choice(sorted(ctx.admissible)))


class OraclePolicy:
    """Follows the environment's walkthrough; random where the environment has none."""

    spec = "oracle"
    reads_env_state = True  # a search must put the environment where the policy acts

    def __init__(self) -> None:
        self._fallback = RandomPolicy()

    def start(self, seed: int) -> None:
        self._fallback.start(seed)

    def act(self, ctx: Context) -> Decision:
        plan = ctx.env.walkthrough()
        if plan:
            return Decision(plan[0])  # a walkthrough gives no reasoning: no thought is data
        return self._fallback.act(ctx)


def _lexical() -> Policy:
    from trajforge.synthesizers.lexical import LexicalPolicy  # it imports this module

    return LexicalPolicy()


# The policies that need no model, by spec.
BUILTIN: dict[str, Callable[[], Policy]] = {
    "random": RandomPolicy,
    "oracle": OraclePolicy,
    "lexical": _lexical,
}


def make_policy(spec: str, **model_options: Any) -> Policy:
    """A policy for a SPEC; `model_options` (cache_dir, timeout_s, prices, temperature, ...)
    configure model policies."""
    if not parse_spec(spec, "policies", BUILTIN).needs_model:
        return BUILTIN[spec]()
    from trajforge.synthesizers.llm_policy import make_llm_policy

    return make_llm_policy(spec, **model_options)
