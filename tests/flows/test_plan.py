"""Task ids are minted when the flow plans the run, before any pipeline runs."""

from __future__ import annotations

from trajforge.flows.config import RunConfig
from trajforge.flows.run import plan_tasks
from trajforge.schemas.records import Task


def test_planned_tasks_carry_the_ids_their_task_records_get():
    specs = plan_tasks.fn(RunConfig(envs=["toy"], tasks=4, seed=3))
    assert len(specs) == 4
    for spec in specs:
        assert spec["task_id"] == Task.make(spec["env"], spec["env_task"], spec["seed"], "").task_id
