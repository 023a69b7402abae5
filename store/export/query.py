"""What an export reads from the lake: one checked filter, one ordered query per format, streamed
in batches (never a whole table in memory), and the thoughts that are no data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from trajforge.schemas.errors import LakeError
from trajforge.store.lake import Lake
from trajforge.store.sql_guard import ReadOnlyError, parse_select, render_select


class ExportError(LakeError):
    """An export that cannot start; nothing was written."""


# The table each format reads, and its columns: `--where` is one condition on them.
SOURCE_TABLE = {"sft": "trajectories", "prm": "trajectories", "dpo": "pairs", "kto": "pairs"}

_TRAJECTORY_COLUMNS = (
    "trajectory_id AS id, task_id, env, instruction, policy, steps, total_reward, success, tools"
)
_PAIR_COLUMNS = (
    "pair_id AS id, task_id, step_index, prefix, chosen, rejected, q_chosen, q_rejected, source, policy"
)


# Bytes of text one sorted pass holds. DuckDB 1.5's ORDER BY cannot spill rows with long strings or
# nested lists to disk (it runs out of memory instead), so a big table is read in several passes,
# each a share of the tasks (by a hash of the task id) sorted on its own. The count of passes
# depends on the data alone, so the same snapshot always gives the same order.
PASS_BYTES = 128 * 2**20  # sorted within the exporter's DuckDB memory limit (512 MiB), measured

_SIZE = {
    "trajectories": "list_sum([strlen(s.observation) + strlen(s.action) + coalesce(strlen(s.thought), 0) "
    "FOR s IN steps])",
    "pairs": "strlen(prefix) + strlen(chosen) + strlen(rejected)",
}


def format_query(
    fmt: str, where: str | None = None, sources: tuple[str, ...] = (), min_gap: float | None = None
) -> str:
    """The rows of one format with their text's length (`size`), unordered (see `ordered_queries`)."""
    table = SOURCE_TABLE[fmt]
    # The filter picks rows inside its own subquery: it cannot undo the conditions below.
    source = f"({filtered(table, where)}) AS filtered" if where else table
    if table == "trajectories":
        if fmt == "sft":
            condition = "success"
        else:
            condition = "len(steps) > 0 AND list_bool_and([s.value IS NOT NULL FOR s IN steps])"
        return f"SELECT {_TRAJECTORY_COLUMNS}, {_SIZE[table]} AS size FROM {source} WHERE {condition}"
    conditions = ["true"]
    if sources:
        conditions.append("source IN (" + ", ".join(_literal(s) for s in sources) + ")")
    if min_gap is not None:
        # A pair with no Q values (a revision) has no gap to compare: --min-gap keeps only measured gaps.
        conditions.append(f"q_chosen - q_rejected >= {float(min_gap)!r}")
    return f"SELECT {_PAIR_COLUMNS}, {_SIZE[table]} AS size FROM {source} WHERE {' AND '.join(conditions)}"


def ordered_queries(lake: Lake, query: str) -> list[str]:
    """`query` split into passes of about PASS_BYTES, each ordered by (task_id, id): rows of a
    task are consecutive, and the same snapshot reads the same order."""
    total = lake.sql(f"SELECT coalesce(sum(size), 0) AS bytes FROM ({query})").column(0)[0].as_py()
    passes = max(1, -(-int(total) // PASS_BYTES))
    rows = f"SELECT * EXCLUDE (size) FROM ({query})"
    if passes == 1:
        return [f"{rows} ORDER BY task_id, id"]
    return [f"{rows} WHERE hash(task_id) % {passes} = {p} ORDER BY task_id, id" for p in range(passes)]


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


def has_tools(lake: Lake, query: str) -> bool:
    """Whether some row of a trajectory query declares tools: its export then carries tool calls."""
    return bool(lake.sql(f"SELECT count(tools) AS n FROM ({query})").column(0)[0].as_py())


def constant_thoughts(lake: Lake) -> frozenset[str]:
    """Thoughts that a policy gave, word for word, on every step it took (at least two): a
    template such as "Following the known solution." says nothing, and SFT would teach it."""
    table = lake.sql(
        "SELECT min(thought) AS thought FROM steps GROUP BY policy "
        "HAVING count(*) >= 2 AND count(thought) = count(*) AND min(thought) = max(thought)"
    )
    return frozenset(t for t in table.column("thought").to_pylist() if t)


def stream(lake: Lake, queries: list[str], rows_per_batch: int = 1_000) -> Iterator[dict[str, Any]]:
    """The queries' rows one by one, read in batches of `rows_per_batch`."""
    for query in queries:
        reader: pa.RecordBatchReader = lake.batches(query, rows_per_batch=rows_per_batch)
        # The reader is drained to the end: an unread result would block the lake's connection.
        for batch in reader:
            yield from batch.to_pylist()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
