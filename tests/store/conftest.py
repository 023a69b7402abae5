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


@pytest.fixture(scope="session")
def rollout_lake() -> Any:
    """`search_lake`, for fixtures of any scope."""
    return search_lake


def search_lake(out: Any, env: Any, policy: Any, specs: list, max_steps: int = 8) -> Any:
    """A lake (at `out`) of one real rollout of `policy` per task spec, recorded as the pipeline
    records it (with the environment's tools, if it declares any)."""
    from trajforge.pipelines.spec import planned_task
    from trajforge.store.lake import Lake
    from trajforge.synthesizers.records import item_key, search_records
    from trajforge.synthesizers.search import SearchSettings, search

    settings = SearchSettings(method="rollout", max_steps=max_steps)
    rows: dict[str, list[dict]] = {"tasks": [], "trajectories": []}
    for spec in specs:
        result = search(env, spec, policy, settings, 0)
        task = {**planned_task(env.name, spec.env_task, spec.seed), "instruction": result.instruction}
        key = item_key(policy.spec, settings)
        tools = getattr(env, "tools", None)
        for table, row in search_records(
            task, policy.spec, key, result, settings, run_id="run-s", tools=tools
        ):
            if table == "trajectories":
                rows[table].append(row)
        rows["tasks"].append(task | {"source": "env", "run_id": "run-s", "created_at": NOW})
    with Lake.open(out) as lake:
        tables = {
            "tasks": to_table(rows["tasks"], TASKS),
            "trajectories": to_table(rows["trajectories"], TRAJECTORIES),
        }
        lake.commit(tables, run_row("run-s"))
    return out


def _toy_search_rows(tasks: int = 8) -> dict[str, list[dict]]:
    """A small real run without Prefect or Beam: MCTS (random policy, every terminal path kept, so
    there are step values and sibling pairs) and best-of-n rollouts (failures among them) on toy
    tasks, then trajectory pairs per task, as the pipeline mines them."""
    from trajforge.environments.toy import ToyEnvironment
    from trajforge.pipelines.spec import planned_task
    from trajforge.synthesizers.pairs import trajectory_pairs
    from trajforge.synthesizers.policies import RandomPolicy
    from trajforge.synthesizers.records import item_key, search_records
    from trajforge.synthesizers.search import Budget, SearchSettings, search, search_seed

    env = ToyEnvironment(max_length=5)
    settings = [
        SearchSettings(method="mcts", max_steps=12, budget=Budget(env_steps=120)),
        SearchSettings(method="best_of_n", max_steps=4, samples=3),
    ]
    rows: dict[str, list[dict]] = {"tasks": [], "trajectories": [], "pairs": []}
    for spec in env.task_specs(tasks, 7):
        task = {**planned_task("toy", spec.env_task, spec.seed), "instruction": spec.instruction}
        found = []
        for s in settings:
            result = search(env, spec, RandomPolicy(), s, search_seed(task["task_id"], "random", s))
            for table, row in search_records(
                task, "random", item_key("random", s), result, s, run_id="run-toy", keep_terminal_paths=True
            ):
                if table in rows:
                    rows[table].append(row)
                    found += [row] if table == "trajectories" else []
        rows["tasks"].append(
            {k: task[k] for k in ("task_id", "env", "env_task", "seed")}
            | {
                "instruction": found[0]["instruction"],
                "source": "env",
                "run_id": "run-toy",
                "created_at": NOW,
            }
        )
        rows["pairs"] += [p.row() for p in trajectory_pairs(found, max_pairs=2)]
    return rows


@pytest.fixture(scope="session")
def toy_lake(tmp_path_factory) -> Any:
    """The folder of a lake holding a small toy run (see _toy_search_rows), plus one policy whose
    every step carries the same thought (a template: the export must leave it out)."""
    from trajforge.schemas.arrow import PAIRS
    from trajforge.store.lake import Lake

    out = tmp_path_factory.mktemp("toy-lake") / "out"
    rows = _toy_search_rows()
    template = [
        {**trajectory(i, steps=3), "policy": "template", "task_id": rows["tasks"][i]["task_id"]}
        for i in range(2)
    ]
    for t in template:
        t["steps"] = [{**s, "thought": "Following the known solution."} for s in t["steps"]]
    tables = {
        "tasks": to_table(rows["tasks"], TASKS),
        "trajectories": to_table(rows["trajectories"] + template, TRAJECTORIES),
        "pairs": to_table(rows["pairs"], PAIRS),
    }
    with Lake.open(out) as lake:
        lake.commit(tables, run_row("run-toy"))
    return out
