"""The rollout loop: one episode of a policy in an environment, within step and time limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trajforge.environments.base import Environment, TaskSpec
from trajforge.inference.context import shorten
from trajforge.schemas.records import Step
from trajforge.synthesizers.policies import Context, Policy


@dataclass
class Episode:
    instruction: str
    steps: list[Step] = field(default_factory=list)
    total_reward: float = 0.0
    success: bool | None = None
    final_observation: str = ""
    stop_reason: str = ""
    env_steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    wall_s: float = 0.0
    screenshots: dict[int, bytes] = field(default_factory=dict)  # the page before step i


def rollout(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    *,
    seed: int,
    max_steps: int,
    timeout_s: float,
    out_of_tokens: Callable[[], bool] = lambda: False,
    max_observation_chars: int | None = None,
) -> Episode:
    """Run one episode. Stops on done, on max_steps, on the time limit, when the model-token
    budget is spent, or when no action is admissible. Limits are checked between steps: a
    single environment step that blocks is the adapter's to bound. Observations longer than
    `max_observation_chars` are cut as they arrive (`inference.context.shorten`)."""

    def capped(text: str) -> str:
        return text if max_observation_chars is None else shorten(text, max_observation_chars)

    start = time.monotonic()
    reset = env.reset(task)
    policy.start(seed)
    ep = Episode(instruction=reset.instruction)
    observation = capped(reset.observation)
    _keep_screenshot(ep, 0, reset.info)
    while True:
        if len(ep.steps) >= max_steps:
            ep.stop_reason = "max_steps"
            break
        if time.monotonic() - start > timeout_s:
            ep.stop_reason = "timeout"
            break
        if out_of_tokens():
            ep.stop_reason = "tokens"
            break
        admissible = env.admissible_actions()
        if not admissible:
            ep.stop_reason = "no_admissible_action"
            break
        history = [s.row() for s in ep.steps]
        decision = policy.act(Context(env, ep.instruction, observation, admissible, history))
        outcome = env.step(decision.action)
        ep.env_steps += 1
        ep.tokens_in += decision.tokens_in
        ep.tokens_out += decision.tokens_out
        ep.total_reward += outcome.reward
        ep.steps.append(
            Step(
                index=len(ep.steps),
                observation=observation,
                action=decision.action,
                thought=decision.thought,
                reward=outcome.reward,
                done=outcome.done,
                admissible=admissible,
            )
        )
        observation = capped(outcome.observation)
        _keep_screenshot(ep, len(ep.steps), outcome.info)
        if outcome.success is not None:
            ep.success = outcome.success
        if outcome.done:
            ep.stop_reason = "done"
            break
    if ep.success is None and ep.stop_reason != "done":
        ep.success = False  # the episode ended without the environment declaring a win
    ep.total_reward = round(ep.total_reward, 9)  # no 1.0000000002 from summed fractions
    ep.final_observation = observation
    ep.wall_s = time.monotonic() - start
    return ep


def _keep_screenshot(ep: Episode, index: int, info: dict) -> None:
    shot = info.get("screenshot")
    if shot:
        ep.screenshots[index] = shot
