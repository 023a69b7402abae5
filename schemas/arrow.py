"""Arrow schemas of the lake's tables: the column names and types are the data contract."""

from __future__ import annotations

import pyarrow as pa

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

# table name -> (schema, primary key)
TABLES: dict[str, tuple[pa.Schema, str]] = {
    "runs": (RUNS, "run_id"),
    "tasks": (TASKS, "task_id"),
    "trajectories": (TRAJECTORIES, "trajectory_id"),
    "failures": (FAILURES, "item_id"),
    "pairs": (PAIRS, "pair_id"),
    "nodes": (NODES, "node_id"),
    "artifacts": (ARTIFACTS, "artifact_id"),
}


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
