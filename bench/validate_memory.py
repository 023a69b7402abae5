"""Memory of the validate step: the flow's streaming gate against the whole-batch one it replaced.

    .venv/bin/python bench/validate_memory.py [--rows 10000 30000 100000] [--steps 8] [--obs-chars 200]

Stages N synthetic trajectories (best_of_n, 2 policies x 2 samples per task, `--steps` steps with
observations of `--obs-chars` characters) as Parquet parts, then runs each approach on them in a
fresh process and prints rows, wall s and peak RSS (ru_maxrss; "over imports": the peak minus the
RSS once everything is imported). The baseline is the previous code, kept below: it read every
table whole, turned it into Python rows for dedup (keeping each row's full JSON), back into Arrow,
into pandas for the suites, and into Python rows again for the counts.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.schemas import arrow, ids

POLICIES = ["random", "oracle"]
SAMPLES = 2
PART_ROWS = 10_000  # rows per staged part file (Beam writes shards of this order)


def _config(out: Path) -> Any:
    from trajforge.flows.config import RunConfig

    return RunConfig(out=out, envs=["toy"], policies=POLICIES, search="best_of_n", samples=SAMPLES)


def _specs(rows: int) -> list[dict[str, Any]]:
    return [{"env": "toy", "env_task": f"corridor-{i}", "seed": 0} for i in range(rows // (2 * SAMPLES))]


def stage(out: Path, rows: int, steps: int, obs_chars: int) -> None:
    """Write the synthetic batch into OUT/runs/bench/staging, part by part."""
    from trajforge.flows.staging import RunDir

    run_dir = RunDir(out, "bench")
    for table in arrow.TABLES:
        (run_dir.staging / table).mkdir(parents=True, exist_ok=True)
    specs = _specs(rows)
    tasks = [
        {
            "task_id": ids.task_id(s["env"], s["env_task"], s["seed"]),
            "env": "toy",
            "env_task": s["env_task"],
            "seed": 0,
            "instruction": f"Open the door of {s['env_task']}.",
            "source": "env",
            "run_id": "bench",
        }
        for s in specs
    ]
    pq.write_table(
        arrow.to_table(tasks, arrow.TASKS), run_dir.staging / "tasks" / "part-00000-of-00001.parquet"
    )
    filler = "You are in a room with a door, a key and a window. " * (obs_chars // 50 + 1)
    part, batch = 0, []
    n = 0
    for task in tasks:
        for policy in POLICIES:
            for sample in range(SAMPLES):
                success = n % 3 == 0
                batch.append(
                    {
                        "trajectory_id": ids.trajectory_id(
                            task["task_id"], policy, {"m": "best_of_n"}, sample
                        ),
                        "task_id": task["task_id"],
                        "env": "toy",
                        "instruction": task["instruction"],
                        "search": "best_of_n",
                        "policy": policy,
                        "steps": [
                            {
                                "index": i,
                                "observation": f"{n}:{i} " + filler[i : i + obs_chars],
                                "action": "go east",
                                "thought": f"step {i} of trajectory {n}",
                                "reward": 1.0 if success and i == steps - 1 else 0.0,
                                "done": i == steps - 1,
                            }
                            for i in range(steps)
                        ],
                        "num_steps": steps,
                        "total_reward": 1.0 if success else 0.0,
                        "success": success,
                        "verifier_score": 1.0 if success else 0.0,
                        "verifier_verdict": "pass" if success else "fail",
                        "tokens_in": 1000,
                        "tokens_out": 100,
                        "cost_usd": 0.001,
                        "model_calls": steps,
                        "cached_calls": 0,
                        "env_steps": steps,
                        "wall_s": 0.5,
                        "stop_reason": "done",
                        "run_id": "bench",
                    }
                )
                n += 1
                if len(batch) == PART_ROWS:
                    pq.write_table(
                        arrow.to_table(batch, arrow.TRAJECTORIES),
                        run_dir.staging / "trajectories" / f"part-{part:05d}-of-99999.parquet",
                        compression="zstd",
                    )
                    part, batch = part + 1, []
    if batch:
        pq.write_table(
            arrow.to_table(batch, arrow.TRAJECTORIES),
            run_dir.staging / "trajectories" / f"part-{part:05d}-of-99999.parquet",
            compression="zstd",
        )


# -- the previous code (flows/run.py, validators/dedup.py, validators/expectations.py) ------------


def _old_dedupe(rows: list[dict[str, Any]], key: str) -> tuple[list[dict[str, Any]], int]:
    volatile = {"wall_s", "created_at"}
    seen: dict[Any, str] = {}
    out, dropped = [], 0
    for row in rows:
        ident = row.get(key)
        content = ids.canonical_json({k: v for k, v in row.items() if k not in volatile})
        if ident is not None and ident in seen:
            if seen[ident] == content:
                dropped += 1
                continue
        elif ident is not None:
            seen[ident] = content
        out.append(row)
    return out, dropped


def _old_derive(table: str, df: Any, pair_gap: float) -> Any:
    import pandas as pd

    derived = {
        "trajectories": ["num_steps_matches_steps", "success_has_reward", "step_rewards_sum_to_total"],
        "pairs": ["chosen_differs", "sibling_gap_met"],
    }
    if df.empty:
        return df.assign(**{c: pd.Series(dtype=bool) for c in derived.get(table, [])})
    if table == "pairs":
        gap = (df["q_chosen"] - df["q_rejected"]).fillna(-1.0)
        return df.assign(
            chosen_differs=df["chosen"] != df["rejected"],
            sibling_gap_met=(df["source"] != "mcts_sibling") | (gap >= pair_gap - 1e-9),
        )
    if table != "trajectories":
        return df
    steps = df["steps"].map(lambda s: list(s) if s is not None else [])
    step_sum = steps.map(lambda s: sum(float(x["reward"] or 0.0) for x in s))
    return df.assign(
        num_steps_matches_steps=steps.map(len) == df["num_steps"],
        success_has_reward=~df["success"].fillna(False).astype(bool) | (df["total_reward"] > 0),
        step_rewards_sum_to_total=(step_sum - df["total_reward"]).abs() < 1e-6,
    )


def _old_validate_batch(tables: dict[str, pa.Table], max_steps: int, pair_gap: float) -> bool:
    import great_expectations as gx

    from trajforge.validators.expectations import _suites

    ctx = gx.get_context(mode="ephemeral")
    source = ctx.data_sources.add_pandas("staging")
    ok = True
    for table, expectations in _suites(max_steps, pair_gap).items():
        if table not in tables:
            continue
        df = _old_derive(table, tables[table].to_pandas(), pair_gap)
        batch = (
            source.add_dataframe_asset(name=table)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": df})
        )
        suite = gx.ExpectationSuite(name=f"trajforge.{table}", expectations=expectations)
        ok = ok and all(r.success for r in batch.validate(suite).results)
    return ok


def old_validate(config: Any, run_dir: Any) -> Counter:
    from trajforge.pipelines import synthesis

    tables, counts = {}, Counter()
    for name in synthesis.STAGED_TABLES:
        schema, key = arrow.TABLES[name]
        rows, dropped = _old_dedupe(run_dir.read_staged(name).to_pylist(), key)
        counts[f"dropped:duplicate_emission:{name}"] += dropped
        tables[name] = arrow.to_table(rows, schema)
    assert _old_validate_batch(tables, config.max_steps, config.mcts.pair_gap)
    trajectories = tables["trajectories"].to_pylist()  # the old _count
    counts["trajectories"] = len(trajectories)
    counts["successes"] = sum(1 for t in trajectories if t["success"])
    return counts


# -- one measurement per fresh process ------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, out: Path, rows: int) -> None:
    import great_expectations  # noqa: F401 - imported before the baseline RSS, as both use it

    from trajforge.flows import run as flow
    from trajforge.flows.staging import RunDir

    config, run_dir = _config(out), RunDir(out, "bench")
    specs = _specs(rows)
    imported = _rss_mb()
    started = time.perf_counter()
    counts = flow.validate.fn(config, run_dir, specs) if method == "new" else old_validate(config, run_dir)
    wall = time.perf_counter() - started
    assert counts["trajectories"] == rows, counts
    print(json.dumps({"wall_s": wall, "peak_mb": _rss_mb(), "imported_mb": imported}))


def _spawn(*args: str) -> str:
    """A fresh process: Linux carries a process's peak RSS across exec, so this one stays small."""
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return result.stdout


def measure(method: str, out: Path, rows: int) -> dict[str, float]:
    output = _spawn("--child", method, "--dir", str(out), "--rows", str(rows))
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--obs-chars", type=int, default=200)
    parser.add_argument("--child", choices=["stage", "old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "stage":
        return stage(args.dir, args.rows[0], args.steps, args.obs_chars)
    if args.child:
        return child(args.child, args.dir, args.rows[0])

    print(f"{args.steps} steps per trajectory, observations of {args.obs_chars} characters\n")
    print("| rows | staged MB | method | wall s | peak RSS MB | over imports MB | vs whole-batch |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        out = Path(tempfile.mkdtemp(prefix="trajforge-validate-bench-"))
        try:
            _spawn(
                "--child",
                "stage",
                "--dir",
                str(out),
                "--rows",
                str(rows),
                "--steps",
                str(args.steps),
                "--obs-chars",
                str(args.obs_chars),
            )
            staged = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 2**20
            old, new = measure("old", out, rows), measure("new", out, rows)
            for name, m in (("whole batch (before)", old), ("streaming gate (now)", new)):
                over = m["peak_mb"] - m["imported_mb"]
                ratio = over / max(old["peak_mb"] - old["imported_mb"], 1e-9)
                print(
                    f"| {rows} | {staged:.1f} | {name} | {m['wall_s']:.1f} | {m['peak_mb']:.0f} "
                    f"| {over:.0f} | {ratio:.2f}x |",
                    flush=True,
                )
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
