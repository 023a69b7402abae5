"""Great Expectations suites that gate every commit: a batch that fails is not committed.

GX never raises on bad data, so `validate_batch` reads each result itself and treats an
expectation that raised as failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from trajforge.schemas import arrow

SEARCHES = ["rollout", "best_of_n", "mcts"]
TASK_SOURCES = ["env", "template", "explored", "curriculum"]
PAIR_SOURCES = ["mcts_sibling", "trajectory", "revision"]


@dataclass
class ExpectationOutcome:
    table: str
    expectation: str
    column: str | None
    success: bool
    detail: str = ""


@dataclass
class ValidationReport:
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> str:
        if self.success:
            return f"all {len(self.outcomes)} expectations met"
        names = "; ".join(f"{o.table}.{o.column or '*'}: {o.expectation} ({o.detail})" for o in self.failed)
        return f"{len(self.failed)}/{len(self.outcomes)} expectations failed: {names}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "summary": self.summary(),
            "expectations": [o.__dict__ for o in self.outcomes],
        }


def _suites(max_steps: int, pair_gap: float) -> dict[str, list]:
    import great_expectations.expectations as gxe

    return {
        "tasks": [
            gxe.ExpectColumnValuesToNotBeNull(column="task_id"),
            gxe.ExpectColumnValuesToBeUnique(column="task_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="env"),
            gxe.ExpectColumnValuesToNotBeNull(column="env_task"),
            gxe.ExpectColumnValuesToBeInSet(column="source", value_set=TASK_SOURCES),
        ],
        "trajectories": [
            gxe.ExpectColumnValuesToNotBeNull(column="trajectory_id"),
            gxe.ExpectColumnValuesToBeUnique(column="trajectory_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="task_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="policy"),
            gxe.ExpectColumnValuesToBeInSet(column="search", value_set=SEARCHES),
            gxe.ExpectColumnValuesToBeBetween(column="total_reward", min_value=-1.0, max_value=1.0),
            gxe.ExpectColumnValuesToBeBetween(column="num_steps", min_value=0, max_value=max_steps),
            gxe.ExpectColumnValuesToBeBetween(column="verifier_score", min_value=0.0, max_value=1.0),
            # Derived checks (see _derive): one column each, expected all True.
            gxe.ExpectColumnValuesToBeInSet(column="num_steps_matches_steps", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="success_has_reward", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="step_rewards_sum_to_total", value_set=[True]),
        ],
        "pairs": [
            gxe.ExpectColumnValuesToNotBeNull(column="pair_id"),
            gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="task_id"),
            gxe.ExpectColumnValuesToBeInSet(column="source", value_set=PAIR_SOURCES),
            gxe.ExpectColumnValuesToBeInSet(column="chosen_differs", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="sibling_gap_met", value_set=[True]),
        ],
        "nodes": [
            gxe.ExpectColumnValuesToNotBeNull(column="node_id"),
            gxe.ExpectColumnValuesToBeUnique(column="node_id"),
            gxe.ExpectColumnValuesToBeBetween(column="depth", min_value=0, max_value=max_steps),
            gxe.ExpectColumnValuesToBeBetween(column="visits", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="prior", min_value=0.0, max_value=1.0),
        ],
        "artifacts": [
            gxe.ExpectColumnValuesToNotBeNull(column="artifact_id"),
            gxe.ExpectColumnValuesToBeUnique(column="artifact_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="trajectory_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="mime", regex=r"^[a-z]+/[a-z0-9.+-]+$"),
        ],
    }


def _derive(table: str, df: pd.DataFrame, pair_gap: float) -> pd.DataFrame:
    if df.empty:
        return df.assign(**{c: pd.Series(dtype=bool) for c in _DERIVED.get(table, [])})
    if table == "pairs":
        gap = (df["q_chosen"] - df["q_rejected"]).fillna(-1.0)
        return df.assign(
            chosen_differs=df["chosen"] != df["rejected"],
            sibling_gap_met=(df["source"] != "mcts_sibling") | (gap >= pair_gap - 1e-9),
        )
    if table != "trajectories":
        return df
    steps = df["steps"].map(lambda s: list(s) if s is not None else [])
    step_sum = steps.map(lambda s: sum(float(x["reward"] or 0.0) for x in s))
    return df.assign(
        num_steps_matches_steps=steps.map(len) == df["num_steps"],
        success_has_reward=~df["success"].fillna(False).astype(bool) | (df["total_reward"] > 0),
        step_rewards_sum_to_total=(step_sum - df["total_reward"]).abs() < 1e-6,
    )


_DERIVED = {
    "trajectories": ["num_steps_matches_steps", "success_has_reward", "step_rewards_sum_to_total"],
    "pairs": ["chosen_differs", "sibling_gap_met"],
}


def _schema_outcome(table: str, data: pa.Table) -> ExpectationOutcome:
    declared, got = arrow.TABLES[table][0], data.schema
    problems = [f"unexpected column {n}" for n in got.names if n not in declared.names]
    for f in declared:
        if f.name not in got.names:
            problems.append(f"{f.name}: missing")
        elif not got.field(f.name).type.equals(f.type):
            problems.append(f"{f.name}: {got.field(f.name).type} != {f.type}")
    return ExpectationOutcome(table, "schema_matches_contract", None, not problems, "; ".join(problems))


def _detail(result: Any) -> str:
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"raised: {result.exception_info.get('exception_message')}"
    res = result.result or {}
    if "unexpected_count" in res:
        sample = res.get("partial_unexpected_list", [])[:3]
        return f"{res['unexpected_count']} unexpected values, e.g. {sample}"
    return ""


def validate_batch(tables: dict[str, pa.Table], *, max_steps: int, pair_gap: float = 0.0) -> ValidationReport:
    """Run the suites over the staged Arrow tables of one run."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("staging")
    report = ValidationReport()
    for table, expectations in _suites(max_steps, pair_gap).items():
        if table not in tables:
            continue
        report.outcomes.append(_schema_outcome(table, tables[table]))
        df = _derive(table, tables[table].to_pandas(), pair_gap)
        batch = (
            source.add_dataframe_asset(name=table)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": df})
        )
        suite = gx.ExpectationSuite(name=f"trajforge.{table}", expectations=expectations)
        for result in batch.validate(suite).results:
            raised = bool(result.exception_info and result.exception_info.get("raised_exception"))
            report.outcomes.append(
                ExpectationOutcome(
                    table=table,
                    expectation=result.expectation_config.type,
                    column=result.expectation_config.kwargs.get("column"),
                    success=bool(result.success) and not raised,
                    detail=_detail(result),
                )
            )
    return report
