"""Each kind is declared once (schemas.kinds): the CLI, the run config, the records and the gate
offer exactly its values, and refuse any other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from trajforge.cli import app
from trajforge.flows.config import load_config
from trajforge.schemas import arrow
from trajforge.schemas.errors import ConfigError
from trajforge.schemas.kinds import PairSource, SearchMethod, TaskSource, values
from trajforge.schemas.records import Pair, Step, Task, Trajectory
from trajforge.validators.expectations import validate_batch

IN_SET = "expect_column_values_to_be_in_set"


def _trajectory(i: int, search: str) -> dict:
    row = Trajectory(
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
    ).row()
    return {**row, "search": search}  # as staged: the gate sees rows that bypassed the records


def _pair(i: int, source: str) -> dict:
    row = Pair(
        pair_id=f"p{i}",
        task_id="task",
        step_index=0,
        prefix="[]",
        chosen="a",
        rejected="b",
        q_chosen=1.0,
        q_rejected=0.0,
        source="trajectory",
    ).row()
    return {**row, "source": source}


def _batch(searches, task_sources, pair_sources) -> dict:
    tasks = [{**Task.make("toy", f"t{i}", 1, "x").row(), "source": s} for i, s in enumerate(task_sources)]
    trajectories = [_trajectory(i, s) for i, s in enumerate(searches)]
    return {
        "tasks": arrow.to_table(tasks, arrow.TASKS),
        "trajectories": arrow.to_table(trajectories, arrow.TRAJECTORIES),
        "pairs": arrow.to_table([_pair(i, s) for i, s in enumerate(pair_sources)], arrow.PAIRS),
    }


def test_the_cli_offers_exactly_the_declared_search_methods():
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output  # unwrapped
    assert f"<{'|'.join(values(SearchMethod))}>" in help_text
    assert values(SearchMethod) == ("rollout", "best_of_n", "mcts", "best_first", "particle")


def test_an_unknown_search_flag_exits_2_listing_the_methods():
    result = CliRunner().invoke(app, ["run", "--search", "beam", "--out", "unused"])
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # typer's box, unwrapped
    assert "'beam' is not one of 'rollout', 'best_of_n', 'mcts', 'best_first', 'particle'" in message


@pytest.mark.parametrize("method", values(SearchMethod))
def test_the_config_accepts_each_declared_search_method(method):
    assert load_config(search=method).search == method


def test_an_unknown_search_method_in_the_config_is_one_line_naming_the_methods():
    with pytest.raises(ConfigError) as exc:
        load_config(search="beam")
    expected = (
        "search: 'beam' is invalid: Input should be "
        "'rollout', 'best_of_n', 'mcts', 'best_first' or 'particle'"
    )
    assert str(exc.value).startswith(expected)


def test_the_gate_passes_every_declared_kind():
    batch = _batch(values(SearchMethod), values(TaskSource), values(PairSource))
    report = validate_batch(batch, max_steps=10)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    ("batch", "failed"),
    [
        ((["rollout", "beam"], ["env"], ["trajectory"]), "trajectories.search: " + IN_SET),
        ((["rollout"], ["env", "oracle"], ["trajectory"]), "tasks.source: " + IN_SET),
        ((["rollout"], ["env"], ["trajectory", "judge"]), "pairs.source: " + IN_SET),
    ],
)
def test_the_gate_names_a_value_outside_its_kind(batch, failed):
    report = validate_batch(_batch(*batch), max_steps=10)
    assert not report.success
    assert failed in report.summary()
    assert report.summary().startswith("1/")


def test_the_records_refuse_a_value_outside_its_kind():
    with pytest.raises(ValidationError, match="search"):
        Trajectory(**_trajectory(0, "beam"))
    with pytest.raises(ValidationError, match="source"):
        Pair(**_pair(0, "judge"))
    with pytest.raises(ValidationError, match="source"):
        Task.make("toy", "t", 1, "x", source="oracle")


def test_every_declared_search_method_has_an_implementation():
    from trajforge.synthesizers.search import METHODS

    assert set(METHODS) == set(values(SearchMethod))
