"""What an export reads from the lake: one checked filter, one ordered query per format, streamed
in batches (never a whole table in memory), and the thoughts that are no data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from trajforge.schemas.errors import LakeError
from trajforge.store.lake import Lake, ReadOnlyError, parse_select, render_select


class ExportError(LakeError):
    """An export that cannot start; nothing was written."""


# The table each format reads, and its columns: `--where` is one condition on them.
SOURCE_TABLE = {"sft": "trajectories", "prm": "trajectories", "dpo": "pairs", "kto": "pairs"}

_TRAJECTORY_COLUMNS = "trajectory_id AS id, task_id, env, instruction, policy, steps, total_reward, success"
_PAIR_COLUMNS = (
    "pair_id AS id, task_id, step_index, prefix, chosen, rejected, q_chosen, q_rejected, source, policy"
)


def format_query(
    fmt: str, where: str | None = None, sources: tuple[str, ...] = (), min_gap: float | None = None
) -> str:
    """The rows of one format, ordered by (task_id, id): the same snapshot reads the same order."""
    table = SOURCE_TABLE[fmt]
    # The filter picks rows inside its own subquery: it cannot undo the conditions below or the order.
    source = f"({filtered(table, where)}) AS filtered" if where else table
    if table == "trajectories":
        condition = (
            "success"
            if fmt == "sft"
            else "len(steps) > 0 AND list_bool_and([s.value IS NOT NULL FOR s IN steps])"
        )
        return f"SELECT {_TRAJECTORY_COLUMNS} FROM {source} WHERE {condition} ORDER BY task_id, id"
    conditions = ["true"]
    if sources:
        conditions.append("source IN (" + ", ".join(_literal(s) for s in sources) + ")")
    if min_gap is not None:
        # A pair with no Q values (a revision) has no gap to compare: --min-gap keeps only measured gaps.
        conditions.append(f"q_chosen - q_rejected >= {float(min_gap)!r}")
    return f"SELECT {_PAIR_COLUMNS} FROM {source} WHERE {' AND '.join(conditions)} ORDER BY task_id, id"


def filtered(table: str, where: str) -> str:
    """`SELECT * FROM table WHERE ...` as DuckDB renders it back from the parsed filter.

    The filter must be exactly one boolean expression over the table's rows: no set operation,
    subquery, ORDER BY or LIMIT, and its parse tree must survive the round trip through SQL text.
    """
    fix = f"--where {where!r}: use one condition on the {table} columns, e.g. --where \"env = 'textworld'\""
    one = "a filter has no UNION, ORDER BY, LIMIT or second statement"
    try:
        statements = parse_select(f"SELECT * FROM {table} WHERE {where}")
    except ReadOnlyError:
        raise ExportError(f"{fix} ({one})") from None
    except LakeError as exc:
        raise ExportError(f"{fix} ({exc})") from None
    reference = parse_select(f"SELECT * FROM {table} WHERE true")[0]
    if len(statements) != 1 or _without(statements[0], "where_clause") != _without(reference, "where_clause"):
        raise ExportError(f"{fix} ({one})")
    condition = statements[0]["node"]["where_clause"]
    if _holds_query(condition):
        raise ExportError(f"{fix} (a filter reads no other table: subqueries are refused)")
    sql = render_select(statements[0])
    if _without(parse_select(sql)[0]) != _without(statements[0]):
        raise ExportError(f"{fix} (DuckDB cannot render this filter back to the same SQL)")
    return sql


def _without(node: Any, where: str | None = None) -> Any:
    """A parse tree without source positions (and without the top node's `where`)."""
    if isinstance(node, dict):
        if where and "node" in node:
            return {**node, "node": _without({k: v for k, v in node["node"].items() if k != where})}
        return {k: _without(v) for k, v in node.items() if k != "query_location"}
    if isinstance(node, list):
        return [_without(v) for v in node]
    return node


def _holds_query(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("class") == "SUBQUERY" or node.get("type") in ("SELECT_NODE", "TABLE_FUNCTION"):
            return True
        return any(_holds_query(v) for v in node.values())
    if isinstance(node, list):
        return any(_holds_query(v) for v in node)
    return False


def constant_thoughts(lake: Lake) -> frozenset[str]:
    """Thoughts that a policy gave, word for word, on every step it took (at least two): a
    template such as "Following the known solution." says nothing, and SFT would teach it."""
    table = lake.sql(
        "SELECT min(thought) AS thought FROM steps GROUP BY policy "
        "HAVING count(*) >= 2 AND count(thought) = count(*) AND count(DISTINCT thought) = 1"
    )
    return frozenset(t for t in table.column("thought").to_pylist() if t)


def stream(lake: Lake, query: str, rows_per_batch: int = 1_000) -> Iterator[dict[str, Any]]:
    """The query's rows one by one, read in batches of `rows_per_batch`."""
    reader: pa.RecordBatchReader = lake.batches(query, rows_per_batch=rows_per_batch)
    # The reader is drained to the end: an unread result would block the lake's connection.
    for batch in reader:
        yield from batch.to_pylist()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
