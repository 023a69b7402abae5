import pytest

from trajforge.schemas import arrow
from trajforge.schemas.records import Step, Task, Trajectory
from trajforge.validators.dedup import dedupe
from trajforge.validators.expectations import validate_batch
from trajforge.validators.verifier import environment_verdict


def _traj(i: int, **over) -> dict:
    t = Trajectory(
        trajectory_id=f"t{i}",
        task_id="task",
        env="toy",
        instruction="x",
        search="rollout",
        policy="random",
        steps=[Step(index=0, observation="o", action="a", reward=1.0, done=True)],
        num_steps=1,
        total_reward=1.0,
        success=True,
        verifier_score=1.0,
    ).row()
    return {**t, **over}


def _batch(rows: list[dict]) -> dict:
    tasks = [Task.make("toy", "corridor-2-0", 1, "x").row()]
    return {
        "tasks": arrow.to_table(tasks, arrow.TASKS),
        "trajectories": arrow.to_table(rows, arrow.TRAJECTORIES),
    }


@pytest.fixture(scope="module")
def good_report():
    return validate_batch(_batch([_traj(i) for i in range(4)]), max_steps=10)


def test_a_clean_batch_passes(good_report):
    assert good_report.success, good_report.summary()
    assert len(good_report.outcomes) > 10


@pytest.mark.parametrize(
    ("override", "failed"),
    [
        ({"trajectory_id": None}, "trajectories.trajectory_id: expect_column_values_to_not_be_null"),
        ({"total_reward": 3.0}, "trajectories.total_reward: expect_column_values_to_be_between"),
        ({"num_steps": 50}, "trajectories.num_steps: expect_column_values_to_be_between"),
        ({"success": True, "total_reward": 0.0, "steps": []}, "success_has_reward"),
        ({"trajectory_id": "t0"}, "trajectories.trajectory_id: expect_column_values_to_be_unique"),
    ],
)
def test_each_broken_rule_is_named(override, failed):
    rows = [_traj(i) for i in range(4)]
    rows[2] = {**rows[2], **override}
    report = validate_batch(_batch(rows), max_steps=10)
    assert not report.success
    assert failed in report.summary()


def test_a_schema_that_drifted_fails():
    batch = _batch([_traj(0)])
    batch["trajectories"] = batch["trajectories"].drop_columns(["critique"])
    report = validate_batch(batch, max_steps=10)
    assert "schema_matches_contract" in report.summary()
    assert "critique: missing" in report.summary()


def test_dedupe_drops_repeats_and_keeps_conflicts():
    a, b = _traj(0, wall_s=1.0), _traj(0, wall_s=2.0)  # same work, other timing
    assert dedupe([a, b], "trajectory_id").dropped == 1
    c = _traj(0, total_reward=0.5)
    result = dedupe([a, c], "trajectory_id")
    assert result.conflicts == ["t0"] and len(result.rows) == 2


def test_environment_verdict():
    assert environment_verdict({"success": True, "total_reward": 1.0})["verifier_verdict"] == "pass"
    fail = environment_verdict({"success": False, "total_reward": 0.25})
    assert (fail["verifier_verdict"], fail["verifier_score"]) == ("fail", 0.25)
    assert environment_verdict({"success": None})["verifier_score"] is None
