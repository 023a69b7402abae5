"""Great Expectations suites that gate every commit: a batch that fails is not committed.

GX never raises on bad data, so the gate reads each result itself and treats an expectation
that raised as failed. `Gate` runs the suites chunk by chunk (bounded memory) and sums the
results per expectation; `validate_batch` is the same over whole tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from trajforge.schemas import arrow, kinds


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

    def one_of(column: str, kind: Any) -> Any:  # a column of a kind declared in schemas.kinds
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(kinds.values(kind)))

    return {
        "tasks": [
            gxe.ExpectColumnValuesToNotBeNull(column="task_id"),
            gxe.ExpectColumnValuesToBeUnique(column="task_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="env"),
            gxe.ExpectColumnValuesToNotBeNull(column="env_task"),
            one_of("source", kinds.TaskSource),
        ],
        "trajectories": [
            gxe.ExpectColumnValuesToNotBeNull(column="trajectory_id"),
            gxe.ExpectColumnValuesToBeUnique(column="trajectory_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="task_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="policy"),
            one_of("search", kinds.SearchMethod),
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
            one_of("source", kinds.PairSource),
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


def _derive(table: str, data: pa.Table, pair_gap: float) -> pa.Table:
    """The derived check columns, computed in Arrow (no Python object per step)."""
    n = data.num_rows
    if table == "pairs":
        gap = pc.fill_null(pc.subtract(data["q_chosen"], data["q_rejected"]), -1.0)
        checks = {
            "chosen_differs": pc.not_equal(data["chosen"], data["rejected"]),
            "sibling_gap_met": pc.or_(
                pc.not_equal(data["source"], "mcts_sibling"), pc.greater_equal(gap, pair_gap - 1e-9)
            ),
        }
    elif table == "trajectories":
        steps = data["steps"].combine_chunks() if n else pa.array([], data.schema.field("steps").type)
        rewards = pc.fill_null(pc.struct_field(pc.list_flatten(steps), "reward"), 0.0).to_numpy()
        step_sum = np.bincount(pc.list_parent_indices(steps).to_numpy(), weights=rewards, minlength=n).astype(
            float
        )
        total = data["total_reward"]
        checks = {
            "num_steps_matches_steps": pc.equal(
                pc.fill_null(pc.list_value_length(steps), 0), data["num_steps"]
            ),
            "success_has_reward": pc.or_(
                pc.invert(pc.fill_null(data["success"], False)), pc.greater(total, 0.0)
            ),
            "step_rewards_sum_to_total": pc.less(pc.abs(pc.subtract(pa.array(step_sum), total)), 1e-6),
        }
    else:
        return data
    for name, values in checks.items():
        data = data.append_column(name, pc.fill_null(values, False))
    return data


def _schema_problems(table: str, got: pa.Schema) -> list[str]:
    declared = arrow.TABLES[table][0]
    problems = [f"unexpected column {n}" for n in got.names if n not in declared.names]
    for f in declared:
        if f.name not in got.names:
            problems.append(f"{f.name}: missing")
        elif not got.field(f.name).type.equals(f.type):
            problems.append(f"{f.name}: {got.field(f.name).type} != {f.type}")
    return problems


def _raised(result: Any) -> str:
    info = result.exception_info or {}
    return f"raised: {info.get('exception_message')}" if info.get("raised_exception") else ""


@dataclass
class _Tally:
    """One expectation's results summed over the chunks of its table."""

    success: bool = True
    unexpected: int = 0
    sample: list[Any] = field(default_factory=list)
    error: str = ""
    counted: bool = False  # some chunk reported an unexpected count

    def outcome(self, table: str, expectation: str, column: str | None) -> ExpectationOutcome:
        detail = self.error
        if not detail and self.counted:
            detail = f"{self.unexpected} unexpected values, e.g. {self.sample[:3]}"
        return ExpectationOutcome(table, expectation, column, self.success, detail)


class Gate:
    """The suites run over a batch chunk by chunk (a chunk: a bounded number of rows of one
    table), their results summed per expectation, so a batch of any size validates in bounded
    memory. Uniqueness across chunks is the caller's (see validators.dedup.Deduper), reported
    here through `duplicates`."""

    def __init__(self, *, max_steps: int, pair_gap: float = 0.0) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._gx = gx
        self._ctx = gx.get_context(mode="ephemeral")
        self._ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self._ctx.data_sources.add_pandas("staging")
        self._suites = _suites(max_steps, pair_gap)
        self._pair_gap = pair_gap
        self._batches: dict[str, Any] = {}
        self._schema: dict[str, set[str]] = {}
        self._tallies: dict[tuple[str, str, str | None], _Tally] = {}
        self._outcomes: list[ExpectationOutcome] = []  # whole-batch checks (completeness)

    def tables(self) -> list[str]:
        return list(self._suites)

    def _validate(self, table: str, df: pd.DataFrame, expectations: list) -> list[Any]:
        if table not in self._batches:
            asset = self._source.add_dataframe_asset(name=table)
            self._batches[table] = asset.add_batch_definition_whole_dataframe("all")
        batch = self._batches[table].get_batch(batch_parameters={"dataframe": df})
        suite = self._gx.ExpectationSuite(name=f"trajforge.{table}", expectations=expectations)
        return batch.validate(suite).results

    def _tally(self, table: str, expectation: str, column: str | None) -> _Tally:
        return self._tallies.setdefault((table, expectation, column), _Tally())

    def check(self, table: str, chunk: pa.Table | pa.RecordBatch) -> None:
        """Run the table's suite on one chunk: the schema, then each expectation on only the
        columns it reads."""
        if table not in self._suites:
            return
        data = pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk
        problems = self._schema.setdefault(table, set())
        problems.update(_schema_problems(table, data.schema))
        expectations = self._suites[table]
        try:
            data = _derive(table, data, self._pair_gap)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            problems.add(f"derived checks: {exc}")  # a drifted schema: reported, the rest still runs
        wanted = {e.column for e in expectations}
        df = data.select([c for c in data.column_names if c in wanted]).to_pandas()
        for result in self._validate(table, df, expectations):
            tally = self._tally(
                table, result.expectation_config.type, result.expectation_config.kwargs.get("column")
            )
            raised = _raised(result)
            tally.success = tally.success and bool(result.success) and not raised
            tally.error = tally.error or raised
            res = result.result or {}
            if "unexpected_count" in res:
                tally.counted = True
                tally.unexpected += res["unexpected_count"] or 0
                if len(tally.sample) < 3:
                    tally.sample += res.get("partial_unexpected_list", [])[: 3 - len(tally.sample)]

    def duplicates(self, table: str, column: str, ids: list[str]) -> None:
        """Ids found again in a later chunk with other content: the uniqueness expectation fails."""
        if ids:
            tally = self._tally(table, "expect_column_values_to_be_unique", column)
            tally.success, tally.counted = False, True
            tally.unexpected += len(ids)
            tally.sample += ids[: max(0, 3 - len(tally.sample))]

    def completeness(self, finished: list[bool], max_failed_share: float) -> None:
        """Every (task, policy) item of the run, finished or not: the batch must hold
        trajectories, and at most `max_failed_share` of the items may have failed."""
        import great_expectations.expectations as gxe

        df = pd.DataFrame({"finished": pd.Series(finished, dtype=bool).astype(int)})
        expectations = [
            gxe.ExpectColumnMaxToBeBetween(column="finished", min_value=1),
            gxe.ExpectColumnValuesToBeInSet(column="finished", value_set=[1], mostly=1.0 - max_failed_share),
        ]
        failed, total = len(finished) - sum(finished), len(finished)
        details = [
            "the batch has no trajectories",
            f"{failed}/{total} (task, policy) items failed, more than max_failed_share {max_failed_share:g}",
        ]
        for result, detail in zip(self._validate("items", df, expectations), details, strict=True):
            ok = bool(result.success) and not _raised(result)
            self._outcomes.append(
                ExpectationOutcome(
                    "items", result.expectation_config.type, "finished", ok, "" if ok else detail
                )
            )

    def report(self) -> ValidationReport:
        report = ValidationReport()
        for table in self._suites:
            if table in self._schema:
                problems = sorted(self._schema[table])
                report.outcomes.append(
                    ExpectationOutcome(
                        table, "schema_matches_contract", None, not problems, "; ".join(problems)
                    )
                )
            for (name, expectation, column), tally in self._tallies.items():
                if name == table:
                    report.outcomes.append(tally.outcome(table, expectation, column))
        report.outcomes += self._outcomes
        return report


def validate_batch(tables: dict[str, pa.Table], *, max_steps: int, pair_gap: float = 0.0) -> ValidationReport:
    """Run the suites over whole Arrow tables (each one chunk)."""
    gate = Gate(max_steps=max_steps, pair_gap=pair_gap)
    for table in gate.tables():
        if table in tables:
            gate.check(table, tables[table])
    return gate.report()
