"""How well a policy plays held-out games, through trajforge's own policy path (`make_policy`:
`random`, `oracle`, `hf:PATH`, ...):

- success rate: episodes the environment declares won, within `max_steps`;
- first-choice step accuracy: along the oracle's path (the environment's walkthrough from each
  state), the share of steps where the policy's one answer is the walkthrough's next action. A
  success rate can flatter (a model can win a small cooking game by taking everything in sight);
  this reads every step;
- steps per episode: the mean length of the policy's own episodes (won or not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from trajforge.environments.base import Environment, TaskSpec
from trajforge.synthesizers.policies import Context, make_policy
from trajforge.synthesizers.rollout import rollout


@dataclass
class Scores:
    policy: str
    games: int
    won: int
    correct: int  # first choices equal to the oracle's next action
    decisions: int  # steps of the oracle's paths that were asked
    steps: int  # steps of the policy's own episodes
    wall_s: float

    @property
    def success(self) -> float:
        return self.won / self.games if self.games else 0.0

    @property
    def step_accuracy(self) -> float:
        return self.correct / self.decisions if self.decisions else 0.0

    @property
    def steps_per_episode(self) -> float:
        return self.steps / self.games if self.games else 0.0


def evaluate(
    spec: str,
    env: Environment,
    tasks: list[TaskSpec],
    *,
    max_steps: int = 40,
    seed: int = 0,
    timeout_s: float = 300.0,
    episodes: bool = True,
    **model_options: Any,
) -> Scores:
    """Episodes of `spec` on `tasks` (one each; none with `episodes=False`) and its first choices
    along the oracle's paths. Model policies answer greedily (temperature 0) unless
    `model_options` say otherwise."""
    model_options.setdefault("temperature", 0.0)
    policy = make_policy(spec, **model_options)
    start = time.monotonic()
    scores = Scores(spec, len(tasks), 0, 0, 0, 0, 0.0)
    try:
        for i, task in enumerate(tasks):
            if episodes:
                episode = rollout(env, task, policy, seed=seed + i, max_steps=max_steps, timeout_s=timeout_s)
                scores.won += bool(episode.success)
                scores.steps += len(episode.steps)
            correct, asked = first_choices(policy, env, task, seed=seed + i, max_steps=max_steps)
            scores.correct += correct
            scores.decisions += asked
    finally:
        close = getattr(policy, "close", None)
        if close:
            close()
    scores.wall_s = round(time.monotonic() - start, 1)
    return scores


def first_choices(
    policy: Any, env: Environment, task: TaskSpec, *, seed: int, max_steps: int
) -> tuple[int, int]:
    """(correct, asked): the policy's choice at each state of the oracle's path against the
    walkthrough's next action; the history it sees is the oracle's actions (no thoughts)."""
    reset = env.reset(task)
    policy.start(seed)
    observation, history, correct = reset.observation, [], 0
    for index in range(max_steps):
        plan = env.walkthrough()
        admissible = env.admissible_actions()
        if not plan or not admissible:
            break
        decision = policy.act(Context(env, reset.instruction, observation, admissible, list(history)))
        correct += decision.action == plan[0]
        history.append({"index": index, "observation": observation, "action": plan[0], "thought": None})
        outcome = env.step(plan[0])
        observation = outcome.observation
        if outcome.done:
            return correct, index + 1
    return correct, len(history)


def markdown(rows: list[Scores], labels: dict[str, str] | None = None) -> str:
    """One table: the policy (or its label), games, success, step accuracy, steps per episode."""
    labels = labels or {}
    lines = [
        "| policy | held-out games | success | first-choice step accuracy | steps / episode | eval s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        lines.append(
            f"| {labels.get(s.policy, s.policy)} | {s.games} | {s.won}/{s.games} ({s.success:.0%}) | "
            f"{s.correct}/{s.decisions} ({s.step_accuracy:.0%}) | {s.steps_per_episode:.1f} | {s.wall_s} |"
        )
    return "\n".join(lines)
