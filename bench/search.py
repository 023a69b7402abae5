"""Search methods on the same TextWorld pool and the same environment-step budget per task.

    .venv/bin/python bench/search.py [--tasks 20] [--budget 400] [--sims 200]

Table 1: tasks solved (a verified success), env steps, preference pairs, wall time for
rollout, best_of_n and MCTS (uniform prior, random rollouts), each with the random policy.
Table 2: the same number of MCTS simulations with snapshot/restore and with replay from
reset (the trees are identical; only the cost differs).
"""

from __future__ import annotations

import argparse
import time

from trajforge.environments.textworld import TextWorldEnvironment
from trajforge.synthesizers.pairs import sibling_pairs
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search


def run_method(env, specs, settings: SearchSettings) -> dict:
    solved = steps = pairs = 0
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        result = search(env, spec, RandomPolicy(), settings, seed=1000 + i)
        best = result.paths[0]
        solved += bool(best.success)
        steps += result.env_steps
        if result.root is not None and best.success:
            rows = [s.row() for s in best.steps]
            pairs += len(
                sibling_pairs(
                    result.root,
                    rows,
                    env="textworld",
                    instruction=result.instruction,
                    task_id=str(i),
                    gap=0.1,
                )
            )
    return {"solved": solved, "steps": steps, "pairs": pairs, "wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--budget", type=int, default=400, help="env steps per task, every method")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--sims", type=int, default=200, help="simulations per task for table 2")
    ap.add_argument("--rollout-depth", type=int, default=MCTSSettings().rollout_depth)
    ap.add_argument("--c-puct", type=float, default=MCTSSettings().c_puct)
    ap.add_argument("--game", default="", help="tw-cooking options, e.g. recipe=2,take=2,go=6,open=true")
    args = ap.parse_args()

    options = {
        k: (v == "true") if v in ("true", "false") else int(v)
        for k, v in (kv.split("=") for kv in args.game.split(",") if kv)
    }
    env = TextWorldEnvironment(options=options or None)
    specs = env.task_specs(args.tasks, seed=0)
    env.prepare(specs, workers=2)
    budget = Budget(env_steps=args.budget)
    mcts = MCTSSettings(rollout_depth=args.rollout_depth, c_puct=args.c_puct)
    methods = {
        "rollout": SearchSettings("rollout", args.max_steps, 1, budget),
        "best_of_n": SearchSettings(
            "best_of_n", args.max_steps, max(1, args.budget // args.max_steps), budget
        ),
        "mcts": SearchSettings("mcts", args.max_steps, 1, budget, mcts),
    }
    print(
        f"\nsearch benchmark: {args.tasks} tw-cooking games ({env.settings}),"
        f" {args.budget} env steps per task, random policy"
    )
    print(f"{'method':<12}{'solved':>8}{'env steps':>11}{'pairs':>7}{'wall s':>8}")
    results = {}
    for name, settings in methods.items():
        r = results[name] = run_method(env, specs, settings)
        print(f"{name:<12}{r['solved']:>8}{r['steps']:>11}{r['pairs']:>7}{r['wall']:>8.1f}")
    base = max(results["best_of_n"]["solved"], 1)
    print(f"mcts solves {results['mcts']['solved'] / base:.1f}x as many tasks as best_of_n")

    print(f"\nbranching: {args.sims} MCTS simulations per task, rollout depth {args.rollout_depth}")
    print(f"{'branching':<12}{'env steps':>11}{'wall s':>8}")
    cost = {}
    for branching in ("snapshot", "replay"):
        settings = SearchSettings(
            "mcts",
            args.max_steps,
            1,
            Budget(env_steps=10**9, simulations=args.sims),
            MCTSSettings(rollout_depth=args.rollout_depth, c_puct=args.c_puct, branching=branching),
        )
        r = run_method(env, specs, settings)
        cost[branching] = r["steps"]
        print(f"{branching:<12}{r['steps']:>11}{r['wall']:>8.1f}")
    print(f"replay costs {cost['replay'] / max(cost['snapshot'], 1):.1f}x the env steps of snapshot/restore")
    print("(both reuse every visited prefix; replay also steps to reposition the environment)")


if __name__ == "__main__":
    main()
