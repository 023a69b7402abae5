import pytest

from trajforge.schemas import arrow
from trajforge.schemas.records import Step, Task, Trajectory
from trajforge.validators.dedup import Deduper, dedupe
from trajforge.validators.expectations import Gate, validate_batch
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


def test_a_replay_that_records_other_accounting_is_a_duplicate_not_a_conflict():
    paid = _traj(0, tokens_in=900, tokens_out=40, cost_usd=0.02, model_calls=3, cached_calls=0)
    replayed = _traj(0, tokens_in=0, tokens_out=0, cost_usd=0.0, model_calls=3, cached_calls=3)
    result = dedupe([paid, {**replayed, "cached_tokens_in": 900}], "trajectory_id")
    assert (result.dropped, result.conflicts, result.rows) == (1, [], [paid])


def _chunks(rows: list[dict], size: int) -> list:
    return [arrow.to_table(rows[i : i + size], arrow.TRAJECTORIES) for i in range(0, len(rows), size)]


def _gate_over_chunks(rows: list[dict], size: int):
    """The flow's way: dedupe and check chunk by chunk, uniqueness across chunks by digest."""
    gate, deduper = Gate(max_steps=10), Deduper("trajectory_id")
    for chunk in _chunks(rows, size):
        keep = deduper.keep(chunk.to_pylist())
        gate.check("trajectories", chunk.filter(keep))
    gate.duplicates("trajectories", "trajectory_id", deduper.cross_chunk)
    return gate.report(), deduper


def test_validating_chunk_by_chunk_names_the_same_broken_rules_as_the_whole_batch():
    rows = [_traj(i) for i in range(6)]
    rows[1] = {**rows[1], "total_reward": 3.0}
    rows[4] = {**rows[4], "total_reward": 2.0}
    rows[5] = {**rows[5], "trajectory_id": "t0", "num_steps": 1, "verifier_score": 0.5}  # conflicts with t0
    whole = validate_batch({"trajectories": arrow.to_table(rows, arrow.TRAJECTORIES)}, max_steps=10)
    chunked, _ = _gate_over_chunks(rows, size=2)
    assert not chunked.success
    assert {(o.column, o.expectation) for o in chunked.failed} == {
        (o.column, o.expectation) for o in whole.failed
    }
    assert "total_reward: expect_column_values_to_be_between (2 unexpected values" in chunked.summary()
    assert (
        "trajectory_id: expect_column_values_to_be_unique (1 unexpected values, e.g. ['t0'])"
        in chunked.summary()
    )


def test_a_repeat_in_a_later_chunk_is_dropped_and_the_batch_passes():
    rows = [_traj(0), _traj(1), _traj(2), _traj(0, wall_s=9.0)]
    report, deduper = _gate_over_chunks(rows, size=2)
    assert report.success, report.summary()
    assert deduper.dropped == 1 and not deduper.conflicts


@pytest.mark.parametrize(
    ("finished", "share", "passes", "named"),
    [
        ([True] * 8 + [False] * 2, 0.2, True, ""),
        (
            [True] * 7 + [False] * 3,
            0.2,
            False,
            "3/10 (task, policy) items failed, more than max_failed_share 0.2",
        ),
        ([True] * 7 + [False] * 3, 0.5, True, ""),
        ([False] * 4, 1.0, False, "the batch has no trajectories"),
    ],
)
def test_the_gate_refuses_a_batch_with_too_many_failed_items(finished, share, passes, named):
    gate = Gate(max_steps=10)
    gate.check("trajectories", arrow.to_table([_traj(0)], arrow.TRAJECTORIES))
    gate.completeness(finished, share)
    report = gate.report()
    assert report.success is passes, report.summary()
    assert named in report.summary()
