"""Pipeline overhead: the Beam rollout pipeline against a bare Python loop over the same tasks.

    .venv/bin/python bench/rollout.py [--env textworld] [--tasks 8] [--policy random --policy oracle]

Prints env steps/s and trajectories/s for each and the ratio (pipeline / loop).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from trajforge.environments import registry
from trajforge.environments.base import TaskSpec
from trajforge.flows.staging import RunDir
from trajforge.pipelines import synthesis
from trajforge.pipelines.spec import PipelineSpec, planned_task
from trajforge.synthesizers.policies import make_policy
from trajforge.synthesizers.search import Budget, SearchSettings, search, search_seed


def settings_for(samples: int) -> SearchSettings:
    return SearchSettings("best_of_n", max_steps=40, samples=samples, budget=Budget(env_steps=40 * samples))


def bare_loop(env_name: str, specs: list[dict], policies: list[str], samples: int) -> tuple[int, int]:
    """The same searches, with the same seeds as the pipeline's, in one plain loop."""
    env = registry.make(env_name)
    settings = settings_for(samples)
    steps = trajectories = 0
    for spec in specs:
        task_id = spec["task_id"]
        for policy in policies:
            seed = search_seed(task_id, policy, settings)
            result = search(
                env, TaskSpec(spec["env_task"], spec["seed"]), make_policy(policy), settings, seed
            )
            steps += result.env_steps
            trajectories += len(result.paths)
    env.close()
    return steps, trajectories


def beam_pipeline(
    specs: list[dict], policies: list[str], samples: int, options: list[str]
) -> tuple[int, int]:
    tmp = Path(tempfile.mkdtemp(prefix="trajforge-bench-"))
    try:
        run_dir = RunDir(tmp, "bench")
        spec = PipelineSpec(run_id="bench", policies=policies, settings=settings_for(samples))
        synthesis.run(options, specs, spec, run_dir.staging)
        table = run_dir.read_staged("trajectories")
        return sum(table["env_steps"].to_pylist()), table.num_rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="textworld")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--policy", action="append", default=None)
    args = ap.parse_args()
    policies = args.policy or ["random", "oracle"]
    env = registry.make(args.env)
    found = env.task_specs(args.tasks, 0)
    if hasattr(env, "prepare"):
        env.prepare(found, workers=2)  # build assets (games) outside the timed part
    specs = [planned_task(args.env, s.env_task, s.seed) for s in found]

    rows = []
    for name, fn in [
        ("bare python loop", lambda: bare_loop(args.env, specs, policies, args.samples)),
        ("beam FnApiRunner", lambda: beam_pipeline(specs, policies, args.samples, ["--runner=FnApiRunner"])),
        (
            "beam multi_processing x2",
            lambda: beam_pipeline(
                specs,
                policies,
                args.samples,
                ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
            ),
        ),
    ]:
        t0 = time.perf_counter()
        steps, trajs = fn()
        wall = time.perf_counter() - t0
        rows.append((name, steps, trajs, wall))

    base_steps_s = rows[0][1] / rows[0][3]
    print(
        f"\nrollout benchmark: env={args.env} tasks={args.tasks} policies={policies} samples={args.samples}"
    )
    print(
        f"{'method':<26}{'env steps':>10}{'trajs':>7}{'wall s':>9}{'steps/s':>10}{'trajs/s':>9}{'vs loop':>9}"
    )
    for name, steps, trajs, wall in rows:
        print(
            f"{name:<26}{steps:>10}{trajs:>7}{wall:>9.2f}{steps / wall:>10.1f}{trajs / wall:>9.2f}"
            f"{(steps / wall) / base_steps_s:>8.2f}x"
        )


if __name__ == "__main__":
    main()
