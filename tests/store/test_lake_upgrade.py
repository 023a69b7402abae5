"""A lake written before synthesized tasks existed opens with their columns and table added
(DuckLake's ALTER TABLE ADD COLUMN), its old rows reading null there."""

from __future__ import annotations

import pyarrow as pa

from trajforge.schemas import arrow
from trajforge.schemas.records import Task
from trajforge.store import tables as tables_module
from trajforge.store.lake import Lake

NEW = ("goal", "setup", "witness", "solve_rate", "attempts", "difficulty", "generator")


def test_an_old_lake_gains_the_task_synthesis_columns_and_table(out, make, monkeypatch):
    old_tasks = pa.schema([f for f in arrow.TASKS if f.name not in NEW])
    old = {k: v for k, v in arrow.TABLES.items() if k != "task_candidates"}
    old["tasks"] = (old_tasks, "task_id")
    monkeypatch.setattr(tables_module, "TABLES", old)
    row = {k: v for k, v in Task.make("toy", "t1", 1, "go").row().items() if k not in NEW}
    with Lake.open(out) as lake:
        lake.commit({"tasks": pa.Table.from_pylist([row], old_tasks)}, make.run_row())
        assert "goal" not in lake.sql("SELECT * FROM tasks").column_names
    monkeypatch.undo()
    with Lake.open(out) as lake:
        tasks = lake.sql("SELECT task_id, goal, witness, generator FROM tasks").to_pylist()
        assert tasks == [{"task_id": row["task_id"], "goal": None, "witness": None, "generator": None}]
        assert lake.sql("SELECT count(*) AS n FROM task_candidates").column("n")[0].as_py() == 0
