"""Throughput of the tool and code environments, each beside its baseline from the same run:

- shop-api (tool calls) against the browser shop (webapp, a real Chromium) on the same tasks and
  seeds, each by its oracle (the template's known solution: page steps vs calls) and by the random
  policy (16 steps at most);
- python (CodeAct cells) with the bubblewrap sandbox against `isolation: none` (the same
  interpreter and limits, no namespaces), the oracle's two steps (the canonical solution, submit)
  on the same HumanEval tasks.

    .venv/bin/python bench/tools.py [--tasks 10] [--code-tasks 20]

Prints episodes/s and steps/s per environment and the ratio to its baseline.
"""

from __future__ import annotations

import argparse
import time

from trajforge.environments import registry
from trajforge.synthesizers.policies import OraclePolicy, RandomPolicy
from trajforge.synthesizers.rollout import rollout


def measure(name: str, options: dict, tasks: int, policy: str, max_steps: int) -> dict:
    env = registry.make(name, **options)
    try:
        specs = env.task_specs(tasks, seed=0)
        env.reset(specs[0])  # warm-up: a browser's or a sandbox's first start is not a step
        episodes = steps = successes = 0
        start = time.monotonic()
        for spec in specs:
            agent = OraclePolicy() if policy == "oracle" else RandomPolicy()
            ep = rollout(env, spec, agent, seed=spec.seed, max_steps=max_steps, timeout_s=300)
            episodes, steps, successes = episodes + 1, steps + ep.env_steps, successes + bool(ep.success)
        wall = time.monotonic() - start
    finally:
        env.close()
    return {"episodes": episodes, "steps": steps, "successes": successes, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=10, help="shop tasks per policy")
    ap.add_argument("--code-tasks", type=int, default=20, help="HumanEval tasks")
    args = ap.parse_args()
    rows = []  # (label, baseline label, figures)
    for policy, max_steps in (("oracle", 20), ("random", 16)):
        base = f"webapp (browser), {policy}"
        rows.append((base, base, measure("webapp", {}, args.tasks, policy, max_steps)))
        rows.append(
            (f"shop-api (tools), {policy}", base, measure("shop-api", {}, args.tasks, policy, max_steps))
        )
    base = "python, isolation none"
    rows.append((base, base, measure("python", {"isolation": "none"}, args.code_tasks, "oracle", 4)))
    rows.append(("python, bwrap sandbox", base, measure("python", {}, args.code_tasks, "oracle", 4)))
    figures = {label: f for label, _, f in rows}
    header = ("environment", "episodes", "steps", "solved", "wall s", "episodes/s", "steps/s", "x baseline")
    print("{:<28}{:>9}{:>7}{:>8}{:>9}{:>12}{:>9}{:>12}".format(*header))
    for label, baseline, f in rows:
        eps, sps = f["episodes"] / f["wall"], f["steps"] / f["wall"]
        b = figures[baseline]
        ratio = sps / (b["steps"] / b["wall"])
        print(
            f"{label:<28}{f['episodes']:>9}{f['steps']:>7}{f['successes']:>8}{f['wall']:>9.2f}"
            f"{eps:>12.2f}{sps:>9.1f}{ratio:>11.2f}x"
        )


if __name__ == "__main__":
    main()
