"""A run's `synthesis:` section: part of the run's fingerprint, refused with one line when wrong,
and with `from_lake` planning the lake's synthesized tasks (their goal, setup, witness, generator)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trajforge.environments import goals
from trajforge.flows.config import load_config
from trajforge.flows.synthesized import lake_tasks
from trajforge.schemas import arrow
from trajforge.schemas.errors import ConfigError
from trajforge.schemas.records import RunRecord, Task
from trajforge.store.lake import Lake


def test_synthesis_settings_are_data_settings():
    plain = load_config(None, envs=["textworld"])
    made = load_config(None, envs=["textworld"], synthesis={"instances": 1})
    assert made.config_hash != plain.config_hash
    assert load_config(None, envs=["textworld"], synthesis={"instances": 2}).config_hash != made.config_hash
    moved = load_config(None, envs=["textworld"], synthesis={"instances": 1}, out="elsewhere", workers=7)
    assert moved.config_hash == made.config_hash
    assert made.synthesis.settings().instances == 1


@pytest.mark.parametrize(
    ("synthesis", "message"),
    [
        ({"sources": ["dreamed"]}, "synthesis.sources: 'dreamed' is unknown"),
        ({"attempts": 0}, "synthesis.attempts: must be at least 1"),
        ({"bogus": 1}, "synthesis.bogus"),
    ],
)
def test_bad_synthesis_is_one_line(synthesis, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, synthesis=synthesis)


def test_from_lake_plans_the_lakes_synthesized_tasks(tmp_path):
    out = tmp_path / "lake"
    env_task = goals.format_env_task("base-game", [("carried", "apple")], ["open box"])
    synthesized = Task.make(
        "toy",
        env_task,
        0,
        "Carry the apple.",
        source="explored",
        goal=goals.goal_json(goals.canonical_goal([("carried", "apple")])),
        setup=["open box"],
        witness=["take apple"],
        generator="explore:novelty",
    )
    plain = Task.make("toy", "plain", 0, "Do the toy task.")
    run = RunRecord(
        run_id="r",
        started_at=datetime.now(UTC),
        status="committed",
        config_json="{}",
        config_hash="h",
        code_version="c",
    )
    with Lake.open(out) as lake:
        lake.commit({"tasks": arrow.to_table([synthesized.row(), plain.row()], arrow.TASKS)}, run.row())
    config = load_config(None, envs=["toy"], out=out, synthesis={"from_lake": True})
    found = lake_tasks(config)
    assert [t["task_id"] for t in found] == [synthesized.task_id]
    assert found[0]["witness"] == ["take apple"] and found[0]["generator"] == "explore:novelty"

    with pytest.raises(ConfigError, match="holds no synthesized tasks of textworld"):
        lake_tasks(load_config(None, envs=["toy", "textworld"], out=out, synthesis={"from_lake": True}))
