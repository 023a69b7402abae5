"""Arrow schemas of the lake's tables, derived from the records (schemas.records): the column names
and types are the data contract, held to it by tests/schemas/test_contract.py."""

from __future__ import annotations

import types
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

from trajforge.schemas.records import (
    Artifact,
    Failure,
    Pair,
    Record,
    RunRecord,
    Step,
    Stored,
    Task,
    TaskCandidate,
    Trajectory,
    TreeNode,
)

TS = pa.timestamp("us", tz="UTC")

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    datetime: TS,
}


def arrow_type(annotation: Any, metadata: Any = ()) -> pa.DataType:
    """The Arrow type of a record field's annotation. Every column is nullable (the lake's key
    columns are NOT NULL in its catalog, see store.lake), so `X | None` is stored as X."""
    for meta in metadata:
        if isinstance(meta, Stored):
            return getattr(pa, meta.arrow_type)()
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return arrow_type(args[0], annotation.__metadata__)
    if origin in (Union, types.UnionType) and len(inner := [a for a in args if a is not type(None)]) == 1:
        return arrow_type(inner[0])
    if origin is Literal and len(kinds := {type(a) for a in args}) == 1:
        return arrow_type(kinds.pop())
    if origin is list:
        return pa.list_(arrow_type(args[0]))
    if origin is dict:
        return pa.map_(arrow_type(args[0]), arrow_type(args[1]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(_fields(annotation))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise TypeError(f"no Arrow type for {annotation!r}; map it in schemas.arrow")


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    return [pa.field(name, arrow_type(f.annotation, f.metadata)) for name, f in model.model_fields.items()]


def schema_of(record: type[Record]) -> pa.Schema:
    """The Arrow schema of a record: its fields, in declaration order."""
    return pa.schema(_fields(record))


STEP = arrow_type(Step)

# table name -> (schema, primary key), in the order the lake creates them
TABLES: dict[str, tuple[pa.Schema, str]] = {
    r.table: (schema_of(r), r.key)
    for r in (RunRecord, Task, Trajectory, Failure, Pair, TreeNode, Artifact, TaskCandidate)
}
RUNS = TABLES["runs"][0]
TASKS = TABLES["tasks"][0]
TRAJECTORIES = TABLES["trajectories"][0]
FAILURES = TABLES["failures"][0]
PAIRS = TABLES["pairs"][0]
NODES = TABLES["nodes"][0]
ARTIFACTS = TABLES["artifacts"][0]
TASK_CANDIDATES = TABLES["task_candidates"][0]


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
