"""`particle`: particle filtering for inference-time scaling (Puri et al., 2025). N partial
trajectories (N = settings.samples) advance in lockstep, one policy action each per step; each
is weighted by its value, exp(value / TEMPERATURE), and the live ones are resampled (systematic
resampling) back to N before the next step. A particle's value is its reward so far, mixed with
the critic's value of its last action when a critic is given and settings.mcts.critic_weight
w > 0: (1 - w) * reward + w * critic (an action it has no opinion on: its reward alone).
Finished particles (done, max_steps, nothing admissible) are kept as paths. Particles share
prefixes after resampling: the Navigator steps each prefix once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from trajforge.environments.base import Environment, TaskSpec
from trajforge.schemas.records import Step
from trajforge.synthesizers.policies import Context, Decision, Policy
from trajforge.synthesizers.search.metering import TokenMeter
from trajforge.synthesizers.search.navigator import BudgetSpent, Navigator, Visit
from trajforge.synthesizers.search.results import Path_, SearchResult, path_rank
from trajforge.synthesizers.search.settings import Critic, SearchSettings

TEMPERATURE = 0.2  # of the weights' softmax over values in [0, 1]: a 0.8 lead is a ~55x weight


@dataclass(frozen=True)
class Particle:
    key: tuple[str, ...]  # the actions so far
    steps: tuple[Step, ...]
    visit: Visit  # where they led
    reward: float = 0.0
    critic: float | None = None  # the critic's value of the last action


def run_particles(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,
) -> SearchResult:
    start = time.monotonic()
    budget, w = settings.budget, settings.mcts.critic_weight
    critic = critic if w > 0 else None
    rng = random.Random(seed)
    nav = Navigator(env, task, settings.mcts.branching, budget.env_steps, settings.max_observation_chars)
    tokens = TokenMeter(policy, budget.tokens, critic)
    reset, first = nav.root()
    n = max(1, min(settings.samples, budget.simulations))
    live = [Particle((), (), first)] * n
    finished: dict[tuple[str, ...], Path_] = {}
    feedback: dict[tuple[str, ...], dict[str, float]] = {}  # the critic's values, per prefix
    result = SearchResult(paths=[], instruction=reset.instruction, simulations=n)

    def finish(p: Particle, stop_reason: str) -> None:
        if p.key not in finished:
            success = bool(p.visit.success) if p.visit.done else False
            final = p.visit.observation
            finished[p.key] = Path_(list(p.steps), round(p.reward, 9), success, final, stop_reason, p.key)

    def value(p: Particle) -> float:
        return p.reward if p.critic is None else (1 - w) * p.reward + w * p.critic

    def out_of_budget() -> str | None:
        if time.monotonic() - start > budget.wall_s:
            return "wall_s"
        return "tokens" if tokens.spent() else None

    stop = None
    while live and stop is None:
        moved: list[Particle] = []
        for i, p in enumerate(live):
            if len(p.steps) >= settings.max_steps or not p.visit.admissible:
                finish(p, "max_steps" if p.visit.admissible else "no_admissible_action")
                continue
            try:
                stop = out_of_budget()
                if stop is None:
                    p, decision = _advance(p, nav, env, policy, reset.instruction, rng, critic, feedback)
            except BudgetSpent:
                stop = "env_steps"
            if stop is not None:  # what the particles got to is what the search found
                for q in moved + live[i:]:
                    finish(q, "search_budget")
                break
            result.tokens_in += decision.tokens_in  # without a metered client; `search` charges one's
            result.tokens_out += decision.tokens_out
            if p.visit.done:
                finish(p, "done")
            else:
                moved.append(p)
        else:
            live = _resample(moved, value, n, rng)
    if not finished:
        finish(Particle((), (), first), "search_budget")
    result.paths = sorted(finished.values(), key=path_rank)
    for sample, path in enumerate(result.paths):
        path.sample = sample
        path.screenshots = {
            i: shot for i in range(len(path.key) + 1) if (shot := _screenshot(nav, path.key[:i])) is not None
        }
    result.env_steps, result.stop_reason = nav.env_steps, stop or "particles_done"
    result.wall_s = time.monotonic() - start
    return result


def _advance(
    p: Particle,
    nav: Navigator,
    env: Environment,
    policy: Policy,
    instruction: str,
    rng: random.Random,
    critic: Critic | None,
    feedback: dict[tuple[str, ...], dict[str, float]],
) -> tuple[Particle, Decision]:
    """One action of the policy from the particle's prefix, stepped (or found in the cache)."""
    policy.start(rng.randrange(2**63))
    if getattr(policy, "reads_env_state", False):
        nav.goto(p.key)  # e.g. the oracle asks the environment for its walkthrough
    history = [s.row() for s in p.steps]
    decision = policy.act(Context(env, instruction, p.visit.observation, list(p.visit.admissible), history))
    value = None
    if critic is not None:
        if p.key not in feedback:
            feedback[p.key] = critic.values(instruction, p.visit.observation, sorted(set(p.visit.admissible)))
        value = feedback[p.key].get(decision.action)
    visit = nav.visit(p.key, decision.action)
    step = Step(
        index=len(p.steps),
        observation=p.visit.observation,
        action=decision.action,
        thought=decision.thought,
        reward=visit.reward,
        done=visit.done,
        admissible=list(p.visit.admissible),
    )
    key, steps = (*p.key, decision.action), (*p.steps, step)
    return Particle(key, steps, visit, p.reward + visit.reward, value), decision


def _resample(
    live: list[Particle], value: Callable[[Particle], float], n: int, rng: random.Random
) -> list[Particle]:
    """n particles drawn from `live` by systematic resampling on exp(value / TEMPERATURE): one
    uniform draw, so equal weights keep every particle once."""
    if not live:
        return []
    values = [value(p) for p in live]
    top = max(values)
    weights = [math.exp((v - top) / TEMPERATURE) for v in values]
    total = sum(weights)
    out, cumulative, i = [], weights[0] / total, 0
    u = rng.random() / n
    for k in range(n):
        while u + k / n > cumulative and i < len(live) - 1:
            i += 1
            cumulative += weights[i] / total
        out.append(live[i])
    return out


def _screenshot(nav: Navigator, prefix: tuple[str, ...]) -> bytes | None:
    visit = nav.cache.get(prefix)
    return visit.screenshot if visit is not None and visit.screenshot else None
