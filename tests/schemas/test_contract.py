"""The data contract: the Arrow schemas derived from the records are exactly the lake's columns as
they were declared by hand before the derivation (frozen below), column for column, so neither the
records nor the derivation can drift the contract unnoticed. A new column is added here too, on
purpose."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from trajforge.schemas import arrow

# Frozen from schemas/arrow.py as it was written by hand (issue 10); add new columns at the end.
TS = pa.timestamp("us", tz="UTC")

STEP = pa.struct(
    [
        ("index", pa.int32()),
        ("observation", pa.string()),
        ("action", pa.string()),
        ("thought", pa.string()),
        ("reward", pa.float64()),
        ("done", pa.bool_()),
        ("value", pa.float64()),
        ("tool_name", pa.string()),
        ("tool_arguments", pa.string()),
        ("tool_result", pa.string()),
        ("admissible", pa.list_(pa.string())),
    ]
)

TASKS = pa.schema(
    [
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("env_task", pa.string()),
        ("seed", pa.int64()),
        ("instruction", pa.string()),
        ("source", pa.string()),
        ("parent_task_id", pa.string()),
        ("run_id", pa.string()),
        ("created_at", TS),
        ("goal", pa.string()),  # issue 11: synthesized tasks
        ("setup", pa.list_(pa.string())),
        ("witness", pa.list_(pa.string())),
        ("solve_rate", pa.float64()),
        ("attempts", pa.int64()),
        ("difficulty", pa.string()),
        ("generator", pa.string()),
    ]
)

TASK_CANDIDATES = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("env_task", pa.string()),
        ("seed", pa.int64()),
        ("instruction", pa.string()),
        ("goal", pa.string()),
        ("setup", pa.list_(pa.string())),
        ("witness", pa.list_(pa.string())),
        ("generator", pa.string()),
        ("source", pa.string()),
        ("parent_task_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

TRAJECTORIES = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("instruction", pa.string()),
        ("search", pa.string()),
        ("policy", pa.string()),
        ("steps", pa.list_(STEP)),
        ("num_steps", pa.int32()),
        ("total_reward", pa.float64()),
        ("success", pa.bool_()),
        ("verifier_score", pa.float64()),
        ("verifier_verdict", pa.string()),
        ("critique", pa.string()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("cost_usd", pa.float64()),
        ("model_calls", pa.int64()),
        ("cached_calls", pa.int64()),
        ("env_steps", pa.int64()),
        ("wall_s", pa.float64()),
        ("final_observation", pa.string()),
        ("stop_reason", pa.string()),
        ("run_id", pa.string()),
        ("created_at", TS),
        ("cached_tokens_in", pa.int64()),
        ("cached_tokens_out", pa.int64()),
        ("cached_cost_usd", pa.float64()),
        ("tools", pa.string()),
    ]
)

FAILURES = pa.schema(
    [
        ("item_id", pa.string()),
        ("task_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", TS),
        ("finished_at", TS),
        ("status", pa.string()),
        ("config_json", pa.string()),
        ("config_hash", pa.string()),
        ("code_version", pa.string()),
        ("counts", pa.map_(pa.string(), pa.int64())),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("cost_usd", pa.float64()),
        ("env_steps", pa.int64()),
        ("snapshot_id", pa.int64()),
        ("cached_tokens_in", pa.int64()),
        ("cached_tokens_out", pa.int64()),
        ("cached_cost_usd", pa.float64()),
    ]
)

PAIRS = pa.schema(
    [
        ("pair_id", pa.string()),
        ("task_id", pa.string()),
        ("step_index", pa.int32()),
        ("prefix", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("q_chosen", pa.float64()),
        ("q_rejected", pa.float64()),
        ("source", pa.string()),
        ("run_id", pa.string()),
        ("policy", pa.string()),
    ]
)

NODES = pa.schema(
    [
        ("node_id", pa.string()),
        ("task_id", pa.string()),
        ("parent_id", pa.string()),
        ("depth", pa.int32()),
        ("action", pa.string()),
        ("visits", pa.int64()),
        ("value", pa.float64()),
        ("prior", pa.float64()),
        ("reward", pa.float64()),
        ("terminal", pa.bool_()),
        ("run_id", pa.string()),
        ("critic", pa.float64()),
    ]
)

ARTIFACTS = pa.schema(
    [
        ("artifact_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("step_index", pa.int32()),
        ("kind", pa.string()),
        ("mime", pa.string()),
        ("data", pa.binary()),
    ]
)

TABLES = {
    "runs": (RUNS, "run_id"),
    "tasks": (TASKS, "task_id"),
    "trajectories": (TRAJECTORIES, "trajectory_id"),
    "failures": (FAILURES, "item_id"),
    "pairs": (PAIRS, "pair_id"),
    "nodes": (NODES, "node_id"),
    "artifacts": (ARTIFACTS, "artifact_id"),
    "task_candidates": (TASK_CANDIDATES, "candidate_id"),
}


def _columns(schema: pa.Schema) -> list[tuple[str, str, bool]]:
    return [(f.name, str(f.type), f.nullable) for f in schema]


def test_the_lake_has_the_same_tables_with_the_same_primary_keys():
    assert [(name, key) for name, (_, key) in arrow.TABLES.items()] == [
        (name, key) for name, (_, key) in TABLES.items()
    ]


@pytest.mark.parametrize("table", list(TABLES))
def test_each_table_has_the_contract_columns_in_order(table):
    derived, frozen = arrow.TABLES[table][0], TABLES[table][0]
    assert _columns(derived) == _columns(frozen)  # readable diff: name, type, nullability
    assert derived.equals(frozen, check_metadata=True)
    assert [f.metadata for f in derived] == [f.metadata for f in frozen]


def test_the_public_schema_names_are_the_tables_schemas():
    named = {
        "runs": arrow.RUNS,
        "tasks": arrow.TASKS,
        "trajectories": arrow.TRAJECTORIES,
        "failures": arrow.FAILURES,
        "pairs": arrow.PAIRS,
        "nodes": arrow.NODES,
        "artifacts": arrow.ARTIFACTS,
        "task_candidates": arrow.TASK_CANDIDATES,
    }
    assert {name: schema for name, (schema, _) in arrow.TABLES.items()} == named
    assert arrow.STEP.equals(STEP) and arrow.TS.equals(TS)


def test_a_new_column_of_a_type_without_an_arrow_mapping_is_refused():
    with pytest.raises(TypeError, match=re.escape("no Arrow type for int | str")):
        arrow.arrow_type(int | str)
    assert arrow.arrow_type(dict[str, float] | None).equals(pa.map_(pa.string(), pa.float64()))
