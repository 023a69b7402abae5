"""MCTS on MiniWoB++ through the command line, as tests/e2e/test_cli_web.py runs it but on five
tasks (the test keeps two for time): a real Chromium, screenshots, two Beam worker processes,
120 env steps and 6 steps per episode per task. Baseline from the same run: best_of_n with the
same policy, tasks and env-step budget.

    .venv/bin/python bench/miniwob_cli.py [--tasks click-button,enter-text,...]

Prints, per search, each task's verified success (bool_or over its trajectories), env steps and
the wall time of the whole `trajforge run`; MCTS is expected to solve every task.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOLVABLE = ["click-button", "click-checkboxes", "enter-text", "click-tab-2", "choose-list"]


def run(search: str, tasks: list[str], root: Path) -> tuple[dict[str, bool], int, float]:
    out, config = root / search / "data", root / f"{search}.yaml"
    settings = {
        "envs": [{"name": "miniwob", "options": {"tasks": tasks, "screenshots": True}}],
        "search": search,
        "policies": ["random"],
        "tasks": len(tasks),
        "max_steps": 6,
        "budget": {"env_steps": 120},
    }
    if search == "best_of_n":
        settings["samples"] = 20  # 20 episodes of up to 6 steps: the same 120 env steps
    config.write_text(json.dumps(settings))
    cli = [sys.executable, "-m", "trajforge.cli"]
    beam = ["--", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    t0 = time.perf_counter()
    ran = subprocess.run(
        [*cli, "run", "--config", str(config), "--out", str(out), *beam],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - t0
    if ran.returncode != 0:
        sys.exit(f"{search}: trajforge run exited {ran.returncode}:\n{ran.stderr[-2000:]}")
    query = (
        "SELECT t.env_task, bool_or(r.success) AS solved, sum(r.env_steps) AS steps FROM trajectories r "
        "JOIN tasks t USING (task_id) GROUP BY 1 ORDER BY 1"
    )
    shown = subprocess.run(
        [*cli, "sql", "--out", str(out), "--format", "json", query],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = json.loads(shown.stdout)
    return {r["env_task"]: r["solved"] for r in rows}, sum(r["steps"] for r in rows), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default=",".join(SOLVABLE), help="comma-separated MiniWoB++ tasks")
    tasks = [t for t in ap.parse_args().tasks.split(",") if t]
    print(f"MiniWoB++ through `trajforge run`: {len(tasks)} tasks, 120 env steps each, random policy")
    print(f"{'search':<10}{'solved':>8}{'env steps':>11}{'wall s':>8}  unsolved")
    with tempfile.TemporaryDirectory() as tmp:
        for search in ("mcts", "best_of_n"):
            solved, steps, wall = run(search, tasks, Path(tmp))
            unsolved = [t for t in tasks if not solved.get(t)]
            print(
                f"{search:<10}{len(tasks) - len(unsolved):>6}/{len(tasks)}{steps:>11}{wall:>8.1f}"
                f"  {', '.join(unsolved) or '-'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
