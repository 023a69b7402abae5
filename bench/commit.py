"""Committing to the lake, by catalog: rows/s, peak memory, and how long a reader waits while a
commit runs.

    .venv/bin/python bench/commit.py [--rows 100000] [--batches 10] [--steps 6] [--catalogs duckdb ...]

For each catalog, in a fresh process: commit `--rows` synthetic trajectories (nested steps) in
`--batches` commits and print rows/s and peak RSS (ru_maxrss). Meanwhile a reader process opens
the lake read-only and counts trajectories in a loop, as `trajforge sql` does: the median time of
a read before the writer starts (idle), the median and worst of the reads during the commits,
and how many reads were refused. The baseline is the `duckdb` catalog (one DuckDB file, the catalog of
lakes made before the others): its reader waits out every commit. `postgres` starts a throwaway
PostgreSQL cluster (Debian's package) for the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import json, resource, sys, time
from datetime import UTC, datetime
from trajforge.schemas.arrow import TRAJECTORIES, to_table
from trajforge.schemas.records import RunRecord
from trajforge.store.lake import Lake

out, catalog, rows, batches, steps = sys.argv[1], sys.argv[2] or None, *map(int, sys.argv[3:6])
now = datetime.now(UTC)

def trajectory(i):
    return {
        "trajectory_id": f"t{i:08d}", "task_id": f"task-{i // 4}", "env": "toy", "instruction": f"do {i}",
        "search": "rollout", "policy": "random", "num_steps": steps, "total_reward": 1.0,
        "success": i % 3 != 0, "run_id": "bench", "created_at": now,
        "steps": [{"index": j, "observation": f"room {j} of {i}: a corridor with doors " * 3,
                   "action": f"go {j}", "thought": None, "reward": 0.0, "done": j == steps - 1}
                  for j in range(steps)],
    }

per = rows // batches
began = time.time()
start = time.perf_counter()
with Lake.open(out, catalog=catalog) as lake:
    for b in range(batches):
        table = to_table([trajectory(b * per + i) for i in range(per)], TRAJECTORIES)
        run = RunRecord(run_id=f"bench-{b}", started_at=now, status="ok", config_json="{}",
                        config_hash="h", code_version="0").row()
        lake.commit({"trajectories": table}, run)
wall = time.perf_counter() - start
print(json.dumps({"rows": per * batches, "wall_s": wall, "began": began, "ended": time.time(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

READER = """
import json, os, sys, time
from trajforge.store.lake import Lake
out, catalog, stop = sys.argv[1], sys.argv[2] or None, sys.argv[3]
waits, refused = [], 0
while not os.path.exists(stop):
    t = time.perf_counter()
    try:
        with Lake.open(out, read_only=True, catalog=catalog, lock_timeout_s=600) as lake:
            lake.sql("SELECT count(*) FROM trajectories")
        waits.append((time.time() - (time.perf_counter() - t), time.perf_counter() - t))
    except Exception:
        refused += 1
    time.sleep(0.05)
print(json.dumps({"waits": waits, "refused": refused}))
"""


def bench(catalog: str, rows: int, batches: int, steps: int, folder: Path) -> dict:
    out = folder / f"lake-{catalog.split(':')[0]}"
    spec = "" if catalog == "sqlite" else catalog
    # The lake exists before the reader starts (its tables made by an empty open).
    subprocess.run(
        [sys.executable, "-c", WRITER, str(out), spec, "0", "1", "1"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    stop = folder / f"stop-{out.name}"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), spec, str(stop)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    time.sleep(3)  # the reader is reading
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(out), spec, str(rows), str(batches), str(steps)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    stop.touch()
    read = json.loads(reader.communicate(timeout=900)[0])
    if done.returncode:
        raise SystemExit(f"{catalog}: {done.stderr[-1500:]}")
    wrote = json.loads(done.stdout)
    idle = [d for t, d in read["waits"] if t + d < wrote["began"]] or [float("nan")]
    during = [d for t, d in read["waits"] if t < wrote["ended"] and t + d > wrote["began"]] or [float("nan")]
    return {
        "catalog": catalog.split("://")[0],
        "rows/s": wrote["rows"] / wrote["wall_s"],
        "peak RSS MB": wrote["peak_rss_mb"],
        "reads": len(during),
        "refused": read["refused"],
        "idle read s": statistics.median(idle),
        "read median s": statistics.median(during),
        "read worst s": max(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--catalogs", nargs="+", default=["duckdb", "sqlite", "postgres"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        for name in args.catalogs:
            if name == "postgres":
                from tests import postgres

                with postgres.cluster() as uri:
                    results.append(bench(uri, args.rows, args.batches, args.steps, Path(tmp)))
            else:
                results.append(bench(name, args.rows, args.batches, args.steps, Path(tmp)))
    print(f"{args.rows} trajectories x {args.steps} steps in {args.batches} commits, {datetime.now(UTC):%F}")
    cols = list(results[0])
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in results:
        print(" | ".join(f"{r[c]:>14.2f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['catalog']} vs {base['catalog']}: rows/s x{r['rows/s'] / base['rows/s']:.2f}, "
            f"worst read wait x{r['read worst s'] / base['read worst s']:.2f}"
        )
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
