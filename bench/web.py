"""MiniWoB++ throughput: trajforge's Playwright environment (1 and 4 at once, in threads: one
Chromium for the process, a context per episode) against MiniWoB's own gymnasium environment
(Selenium + ChromeDriver) on the same tasks and seeds, random policy.

    .venv/bin/python bench/web.py [--seeds 2] [--max-steps 8]

Prints episodes/s and steps/s per driver and the ratio to the Selenium baseline.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time

from trajforge.environments.base import TaskSpec
from trajforge.environments.miniwob import DEFAULT_TASKS, MiniWoBEnvironment
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.rollout import rollout


def ours(specs: list[TaskSpec], workers: int, max_steps: int) -> tuple[int, int]:
    """`workers` environments, each in its own thread, their episodes in one shared Chromium."""
    chunks = [specs[i::workers] for i in range(workers)]
    totals = [(0, 0)] * workers

    def work(i: int) -> None:
        env = MiniWoBEnvironment()
        episodes = steps = 0
        try:
            for spec in chunks[i]:
                ep = rollout(env, spec, RandomPolicy(), seed=spec.seed, max_steps=max_steps, timeout_s=120)
                episodes, steps = episodes + 1, steps + ep.env_steps
        finally:
            env.close()
        totals[i] = (episodes, steps)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(e for e, _ in totals), sum(s for _, s in totals)


def selenium(specs: list[TaskSpec], max_steps: int) -> tuple[int, int]:
    """MiniWoB's gymnasium environments: one per task, reset per seed, random element clicks."""
    import gymnasium
    import miniwob
    from miniwob.action import ActionTypes

    os.environ.setdefault("MINIWOB_CHROME_BINARY", "/usr/bin/chromium")
    os.environ.setdefault("MINIWOB_CHROMEDRIVER", "/usr/bin/chromedriver")
    gymnasium.register_envs(miniwob)
    episodes = steps = 0
    by_task: dict[str, list[int]] = {}
    for spec in specs:
        by_task.setdefault(spec.env_task, []).append(spec.seed)
    for task, seeds in by_task.items():
        env = gymnasium.make(f"miniwob/{task}-v1")
        try:
            for seed in seeds:
                rng = random.Random(seed)
                obs, _ = env.reset(seed=seed)
                for _ in range(max_steps):
                    refs = [el["ref"] for el in obs["dom_elements"]]
                    action = env.unwrapped.create_action(ActionTypes.CLICK_ELEMENT, ref=rng.choice(refs))
                    obs, _, terminated, truncated, _ = env.step(action)
                    steps += 1
                    if terminated or truncated:
                        break
                episodes += 1
        finally:
            env.close()
    return episodes, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=2, help="episodes per task")
    ap.add_argument("--max-steps", type=int, default=8)
    args = ap.parse_args()
    specs = [TaskSpec(task, seed) for seed in range(args.seeds) for task in DEFAULT_TASKS]
    rows = []
    for name, fn in [
        ("selenium (miniwob gym)", lambda: selenium(specs, args.max_steps)),
        ("playwright x1", lambda: ours(specs, 1, args.max_steps)),
        ("playwright x4", lambda: ours(specs, 4, args.max_steps)),
    ]:
        t0 = time.perf_counter()
        episodes, steps = fn()
        rows.append((name, episodes, steps, time.perf_counter() - t0))
    base = rows[0][1] / rows[0][3]
    print(
        f"\nweb benchmark: {len(DEFAULT_TASKS)} MiniWoB tasks x {args.seeds} seeds, random policy, "
        f"<= {args.max_steps} steps"
    )
    header = ("driver", "episodes", "steps", "wall s", "episodes/s", "steps/s", "vs selenium")
    print("{:<24}{:>9}{:>7}{:>8}{:>11}{:>9}{:>12}".format(*header))
    for name, episodes, steps, wall in rows:
        print(
            f"{name:<24}{episodes:>9}{steps:>7}{wall:>8.1f}{episodes / wall:>11.2f}{steps / wall:>9.1f}"
            f"{(episodes / wall) / base:>11.2f}x"
        )


if __name__ == "__main__":
    main()
