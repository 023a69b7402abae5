"""The figures of a run report, read from the lake (all runs, or one): each a list of rows for
one plot. Rendering them is the command line's business (trajforge/report.py)."""

from __future__ import annotations

from typing import Any

from trajforge.store.lake import Lake

# name -> query over the lake; {where} is the run filter (`run_id = '...'` or `true`).
QUERIES: dict[str, str] = {
    "success_by_env": "SELECT env AS label, count(*) AS n, avg(success::INT) AS rate "
    "FROM trajectories WHERE {where} GROUP BY ALL ORDER BY label",
    "success_by_policy": "SELECT policy AS label, count(*) AS n, avg(success::INT) AS rate "
    "FROM trajectories WHERE {where} GROUP BY ALL ORDER BY label",
    "success_by_source": "SELECT coalesce(k.source, '?') AS label, count(*) AS n, "
    "avg(t.success::INT) AS rate "
    "FROM trajectories AS t LEFT JOIN tasks AS k USING (task_id) WHERE {twhere} GROUP BY ALL ORDER BY label",
    "effort": "SELECT search || ' / ' || policy AS label, avg(env_steps) AS env_steps, "
    "avg(model_calls) AS model_calls, avg(success::INT) AS rate, count(*) AS n "
    "FROM trajectories WHERE {where} GROUP BY ALL ORDER BY label",
    "lengths": "SELECT num_steps AS value, success FROM trajectories WHERE {where}",
    "rewards": "SELECT total_reward AS value, success FROM trajectories WHERE {where}",
    "verifier_scores": "SELECT verifier_score AS value, success FROM trajectories "
    "WHERE {where} AND verifier_score IS NOT NULL",
    "judge": "SELECT CASE WHEN success THEN 'succeeded' ELSE 'failed' END AS truth, "
    "coalesce(verifier_verdict, 'not judged') AS verdict, count(*) AS n "
    "FROM trajectories WHERE {where} AND success IS NOT NULL GROUP BY ALL ORDER BY ALL",
    "cost": "SELECT policy AS label, sum(cost_usd) AS cost, "
    "count(*) FILTER (WHERE success AND coalesce(verifier_verdict, 'pass') NOT IN ('fail', 'failed')) "
    "AS verified FROM trajectories WHERE {where} GROUP BY ALL ORDER BY label",
    "failures": "SELECT stage || ':' || reason AS label, count(*) AS n FROM failures WHERE {where} "
    "GROUP BY ALL ORDER BY n DESC, label",
    "difficulty": "SELECT coalesce(difficulty::VARCHAR, 'not synthesized') AS label, count(*) AS n "
    "FROM tasks WHERE {where} GROUP BY ALL ORDER BY label",
    "runs": "SELECT run_id, status, started_at::VARCHAR AS started_at, finished_at::VARCHAR AS finished_at, "
    "cost_usd, tokens_in, tokens_out FROM runs WHERE {where} ORDER BY started_at",
}


def report_data(lake: Lake, run_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every figure's rows; `run_id` None: the whole lake."""
    where = "true" if run_id is None else "run_id = '" + run_id.replace("'", "''") + "'"
    twhere = "true" if run_id is None else "t." + where
    columns = _columns(lake)
    data: dict[str, list[dict[str, Any]]] = {}
    for name, query in QUERIES.items():
        if name == "difficulty" and "difficulty" not in columns.get("tasks", set()):
            data[name] = []
            continue
        data[name] = lake.sql(query.format(where=where, twhere=twhere)).to_pylist()
    return data


def _columns(lake: Lake) -> dict[str, set[str]]:
    rows = lake.sql(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = 'lake'"
    ).to_pylist()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    return found
