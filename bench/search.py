"""Search methods on the same TextWorld pool and the same environment-step budget per task.

    .venv/bin/python bench/search.py [--tasks 20] [--budget 400] [--sims 200]
    .venv/bin/python bench/search.py --env miniwob [--seeds 3] [--prior both] [--task-list a,b]

Table 1: tasks solved (a verified success), env steps, preference pairs, wall time for
rollout, best_of_n, MCTS (uniform prior, random rollouts), best_first (uniform prior) and
particle filtering (as many particles as best_of_n's samples, weighted by reward so far), each
with the random policy.
Table 2: the same number of MCTS simulations with snapshot/restore and with replay from
reset (the trees are identical; only the cost differs).
With --env miniwob: MCTS on MiniWoB++'s default tasks and run defaults (400 env steps per task,
max_steps 6, rollout depth 3, c_puct 1.0), a uniform prior (the random policy) against the
lexical policy's priors, per seed: tasks solved, the six easy tasks solved, env steps, wall time.
"""

from __future__ import annotations

import argparse
import time

from trajforge.environments.textworld import TextWorldEnvironment
from trajforge.synthesizers.lexical import LexicalPolicy
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


# MCTS with a uniform prior leaves some of these unsolved on some seeds; lexical priors should not.
EASY = ["click-button", "click-checkboxes", "enter-text", "click-tab-2", "login-user", "choose-list"]
PRIORS = {"uniform": RandomPolicy, "lexical": LexicalPolicy}


def miniwob_priors(seeds: range, priors: list[str], tasks: list[str] | None) -> None:
    """MCTS on MiniWoB's run defaults, each prior on the same tasks, seeds and budget."""
    from trajforge.environments.miniwob import DEFAULT_TASKS, MiniWoBEnvironment

    names = tasks or DEFAULT_TASKS
    run = MiniWoBEnvironment.run_defaults
    settings = SearchSettings("mcts", run["max_steps"], 1, Budget(env_steps=400), MCTSSettings(**run["mcts"]))
    easy = [t for t in EASY if t in names]
    print(
        f"\nMiniWoB++ MCTS: {len(names)} tasks, 400 env steps per task, max_steps {settings.max_steps},"
        f" rollout depth {settings.mcts.rollout_depth}, c_puct {settings.mcts.c_puct}"
    )
    print(f"{'seed':>4}  {'prior':<9}{'solved':>8}{'easy':>6}{'env steps':>11}{'wall s':>8}  unsolved")
    env = MiniWoBEnvironment(tasks=list(names))
    try:
        for seed in seeds:
            specs = env.task_specs(len(names), seed)
            for prior in priors:
                t0, steps, unsolved = time.perf_counter(), 0, []
                for i, spec in enumerate(specs):
                    result = search(env, spec, PRIORS[prior](), settings, seed=1000 * seed + i)
                    steps += result.env_steps
                    if not result.paths[0].success:
                        unsolved.append(spec.env_task)
                solved = f"{len(specs) - len(unsolved)}/{len(specs)}"
                solved_easy = f"{sum(t not in unsolved for t in easy)}/{len(easy)}"
                wall = time.perf_counter() - t0
                print(
                    f"{seed:>4}  {prior:<9}{solved:>8}{solved_easy:>6}{steps:>11}{wall:>8.1f}"
                    f"  {', '.join(unsolved) or '-'}",
                    flush=True,
                )
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", choices=["textworld", "miniwob"], default="textworld")
    ap.add_argument("--seeds", type=int, default=3, help="miniwob: run seeds (task instances, searches)")
    ap.add_argument("--first-seed", type=int, default=0, help="miniwob: the seeds are FIRST.. FIRST+SEEDS-1")
    ap.add_argument("--prior", choices=[*PRIORS, "both"], default="both", help="miniwob: MCTS priors")
    ap.add_argument("--task-list", default="", help="miniwob: comma-separated tasks (default: the 18)")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--budget", type=int, default=400, help="env steps per task, every method")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--sims", type=int, default=200, help="simulations per task for table 2")
    ap.add_argument("--rollout-depth", type=int, default=MCTSSettings().rollout_depth)
    ap.add_argument("--c-puct", type=float, default=MCTSSettings().c_puct)
    ap.add_argument("--game", default="", help="tw-cooking options, e.g. recipe=2,take=2,go=6,open=true")
    args = ap.parse_args()
    if args.env == "miniwob":
        priors = list(PRIORS) if args.prior == "both" else [args.prior]
        miniwob_priors(
            range(args.first_seed, args.first_seed + args.seeds),
            priors,
            [t for t in args.task_list.split(",") if t] or None,
        )
        return

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
        "best_first": SearchSettings("best_first", args.max_steps, 1, budget, mcts),
        "particle": SearchSettings("particle", args.max_steps, max(1, args.budget // args.max_steps), budget),
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
    for name in ("mcts", "particle"):
        print(f"{name} solves {results[name]['solved'] / base:.1f}x as many tasks as best_of_n")

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
