"""`rollout` and `best_of_n`: independent episodes of the policy within the budget."""

from __future__ import annotations

import random
import time

from trajforge.environments.base import Environment, TaskSpec
from trajforge.synthesizers.policies import Policy
from trajforge.synthesizers.rollout import rollout
from trajforge.synthesizers.search.metering import TokenMeter
from trajforge.synthesizers.search.results import Path_, SearchResult, path_rank
from trajforge.synthesizers.search.settings import Critic, SearchSettings


def sample_rollouts(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,  # no use for one: each episode is the policy's alone
) -> SearchResult:
    """`rollout` (one) and `best_of_n` (N) independent episodes within the budget."""
    start = time.monotonic()
    n = 1 if settings.method == "rollout" else settings.samples
    result = SearchResult(paths=[])
    rng = random.Random(seed)
    tokens = TokenMeter(policy, settings.budget.tokens)
    for sample in range(n):
        left = settings.budget.env_steps - result.env_steps
        wall_left = settings.budget.wall_s - (time.monotonic() - start)
        if left <= 0 or wall_left <= 0 or tokens.spent():
            break
        ep = rollout(
            env,
            task,
            policy,
            seed=rng.randrange(2**63),
            max_steps=min(settings.max_steps, left),
            timeout_s=wall_left,
            out_of_tokens=tokens.spent,
            max_observation_chars=settings.max_observation_chars,
        )
        result.instruction = ep.instruction
        result.env_steps += ep.env_steps
        result.simulations += 1
        result.tokens_in += ep.tokens_in
        result.tokens_out += ep.tokens_out
        result.paths.append(Path_.from_episode(ep, sample))
    result.paths.sort(key=path_rank)
    result.wall_s = time.monotonic() - start
    return result
