"""Export throughput and memory: trajforge's streaming exporter against a plain pandas + json one.

    .venv/bin/python bench/export.py [--rows 100000] [--steps 8] [--obs-chars 400] [--memory-limit 512MiB]

Commits N synthetic successful trajectories (`--steps` steps, observations of `--obs-chars`
characters) to a lake, then exports them as TRL SFT shards in a fresh process per approach and
prints rows, wall s, rows/s and peak RSS (ru_maxrss). The baseline is what one writes without
the exporter: read the table whole into pandas, build each conversation, write JSON lines.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from trajforge.schemas.arrow import TRAJECTORIES, to_table
from trajforge.store.export import MEMORY_LIMIT, reader_limits

COMMIT_ROWS = 10_000


def build(out: Path, rows: int, steps: int, obs_chars: int) -> None:
    from trajforge.schemas.records import RunRecord
    from trajforge.store.lake import Lake

    rng = random.Random(0)
    words = ["key", "door", "north", "lamp", "table", "chest", "red", "old", "you", "see", "a", "the", "room"]
    # Text that compresses like prose, not like one repeated sentence: a pool of random passages.
    walls = [" ".join(rng.choices(words, k=obs_chars // 4))[:obs_chars] for _ in range(997)]
    with Lake.open(out) as lake:
        for start in range(0, rows, COMMIT_ROWS):
            batch = [
                {
                    "trajectory_id": f"traj-{i:08d}",
                    "task_id": f"task-{i // 4:08d}",
                    "env": "toy",
                    "instruction": f"take the key and open door {i}",
                    "search": "mcts",
                    "policy": "random",
                    "steps": [
                        {
                            "index": j,
                            "observation": f"room {j} of {i}. {walls[(i * steps + j) % len(walls)]}",
                            "action": f"go east {j}",
                            "thought": None,
                            "reward": float(j == steps - 1),
                            "done": j == steps - 1,
                            "value": 0.9,
                        }
                        for j in range(steps)
                    ],
                    "num_steps": steps,
                    "total_reward": 1.0,
                    "success": True,
                    "run_id": f"bench-{start}",
                }
                for i in range(start, min(rows, start + COMMIT_ROWS))
            ]
            run = RunRecord(
                run_id=f"bench-{start}",
                started_at=datetime.now(UTC),
                status="ok",
                config_json="{}",
                config_hash="bench",
                code_version="0",
            ).row()
            lake.commit({"trajectories": to_table(batch, TRAJECTORIES)}, run)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_trajforge(out: Path, dest: Path, memory_limit: str) -> dict:
    from trajforge.store.export import ExportSpec, export
    from trajforge.store.lake import Lake

    imported = _rss_mb()
    start = time.perf_counter()
    with Lake.open(out, read_only=True, **{**reader_limits(), "memory_limit": memory_limit}) as lake:
        result = export(lake, dest, ExportSpec(split={"train": 0.95, "test": 0.05}))
    return {"rows": result.rows, "wall_s": time.perf_counter() - start, "imports_mb": imported}


def child_baseline(out: Path, dest: Path, memory_limit: str) -> dict:
    from trajforge.schemas.conversation import messages
    from trajforge.store.lake import Lake

    imported = _rss_mb()
    start = time.perf_counter()
    with Lake.open(out, read_only=True) as lake:  # DuckDB's default limit: the whole table must fit
        df = lake.sql("SELECT * FROM trajectories WHERE success ORDER BY task_id, trajectory_id").to_pandas()
    dest.mkdir(parents=True)
    with (dest / "train.jsonl").open("w") as f:
        for row in df.itertuples():
            f.write(json.dumps({"messages": messages(row.env, row.instruction, list(row.steps))}) + "\n")
    return {"rows": len(df), "wall_s": time.perf_counter() - start, "imports_mb": imported}


def measure(kind: str, out: Path, dest: Path, memory_limit: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(out), str(dest), memory_limit],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--obs-chars", type=int, default=400)
    parser.add_argument("--memory-limit", default=MEMORY_LIMIT, help="DuckDB's memory limit for the exporter")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, out, dest, limit = args.child
        fn = child_trajforge if kind == "trajforge" else child_baseline
        result = fn(Path(out), Path(dest), limit)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        t0 = time.perf_counter()
        build(root / "lake", args.rows, args.steps, args.obs_chars)
        data_mb = sum(p.stat().st_size for p in (root / "lake").rglob("*.parquet")) / 2**20
        print(
            f"lake: {args.rows} trajectories x {args.steps} steps, {args.obs_chars}-char observations, "
            f"{data_mb:.0f} MB of Parquet, built in {time.perf_counter() - t0:.0f} s"
        )
        print(
            f"{'approach':<28}{'rows':>9}{'wall s':>9}{'rows/s':>10}{'peak RSS MB':>13}{'after imports':>15}"
        )
        results = {}
        for kind, label in (
            ("trajforge", "trajforge export (stream)"),
            ("baseline", "pandas + json (whole)"),
        ):
            r = measure(kind, root / "lake", root / kind, args.memory_limit)
            results[kind] = r
            rate = r["rows"] / r["wall_s"]
            print(
                f"{label:<28}{r['rows']:>9}{r['wall_s']:>9.1f}{rate:>10.0f}{r['peak_rss_mb']:>13.0f}"
                f"{r['imports_mb']:>15.0f}"
            )
        ours, base = results["trajforge"], results["baseline"]
        speed = ours["rows"] / ours["wall_s"] / (base["rows"] / base["wall_s"])
        print(
            f"ratio: {speed:.2f}x the baseline's rows/s, "
            f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x its peak RSS"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
