from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from trajforge.schemas.arrow import TASKS, TRAJECTORIES, to_table
from trajforge.schemas.records import RunRecord

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def trajectory(i: int, *, success: bool = True, steps: int = 3, run_id: str = "run-1") -> dict:
    return {
        "trajectory_id": f"traj-{i:04d}",
        "task_id": f"task-{i % 3}",
        "env": "toy",
        "instruction": f"reach cell {i}",
        "search": "rollout",
        "policy": "random",
        "steps": [
            {
                "index": j,
                "observation": f"obs {i}.{j}",
                "action": f"move {j}",
                "thought": "go on" if j == 0 else None,
                "reward": 1.0 if j == steps - 1 else 0.0,
                "done": j == steps - 1,
            }
            for j in range(steps)
        ],
        "num_steps": steps,
        "total_reward": 1.0 if success else 0.0,
        "success": success,
        "run_id": run_id,
        "created_at": NOW,
    }


def task(i: int, run_id: str = "run-1") -> dict:
    return {
        "task_id": f"task-{i}",
        "env": "toy",
        "env_task": "grid",
        "seed": i,
        "instruction": f"task {i}",
        "source": "env",
        "run_id": run_id,
        "created_at": NOW,
    }


def run_row(run_id: str = "run-1", started_at: datetime = NOW) -> dict[str, Any]:
    return RunRecord(
        run_id=run_id,
        started_at=started_at,
        status="ok",
        config_json="{}",
        config_hash="h",
        code_version="0",
        counts={"kept": 2, "dropped:timeout": 1},
    ).row()


def batch(trajectories: list[dict], tasks: list[dict] | None = None) -> dict[str, pa.Table]:
    return {
        "tasks": to_table(tasks if tasks is not None else [task(i) for i in range(3)], TASKS),
        "trajectories": to_table(trajectories, TRAJECTORIES),
    }


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture
def make() -> SimpleNamespace:
    """Row builders for the store tests (a fixture, so no test imports another test file)."""
    return SimpleNamespace(trajectory=trajectory, task=task, run_row=run_row, batch=batch, now=NOW)
