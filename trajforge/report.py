"""`trajforge report`: one self-contained HTML file with the plots of a run (or of the lake),
viewable offline: Plotly's JavaScript is inlined once, every figure is drawn from data in the
page, nothing is fetched."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

Rows = list[dict[str, Any]]

TITLES = {
    "success_by_env": "Success rate by environment",
    "success_by_source": "Success rate by task source",
    "success_by_policy": "Success rate by policy",
    "effort": "Search effort against success (mean env steps per trajectory)",
    "lengths": "Trajectory length (steps)",
    "rewards": "Total reward",
    "verifier_scores": "Verifier score",
    "judge": "The judge's verdicts against the environment's ground truth",
    "cost": "Cost per verified trajectory (USD)",
    "failures": "Failures by reason",
    "difficulty": "Task difficulty bands",
}


def _rate_bars(rows: Rows) -> Any:
    import plotly.graph_objects as go

    return go.Figure(
        go.Bar(
            x=[r["label"] for r in rows],
            y=[r["rate"] for r in rows],
            text=[f"{r['rate']:.0%} of {r['n']}" for r in rows],
            textposition="auto",
        ),
        layout={"yaxis": {"range": [0, 1], "tickformat": ".0%"}},
    )


def _effort(rows: Rows) -> Any:
    import plotly.graph_objects as go

    return go.Figure(
        go.Scatter(
            x=[r["env_steps"] for r in rows],
            y=[r["rate"] for r in rows],
            text=[r["label"] for r in rows],
            mode="markers+text",
            textposition="top center",
            marker={"size": [8 + min(r["n"], 40) for r in rows]},
        ),
        layout={
            "xaxis": {"title": "mean env steps"},
            "yaxis": {"title": "success rate", "tickformat": ".0%"},
        },
    )


def _histogram(rows: Rows) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(layout={"barmode": "overlay"})
    for outcome, name in ((True, "succeeded"), (False, "failed"), (None, "unknown")):
        values = [r["value"] for r in rows if r["success"] is outcome]
        if values:
            fig.add_trace(go.Histogram(x=values, name=name, opacity=0.7))
    return fig


def _judge(rows: Rows) -> Any:
    import plotly.graph_objects as go

    truths = sorted({r["truth"] for r in rows})
    verdicts = sorted({r["verdict"] for r in rows})
    cells = {(r["truth"], r["verdict"]): r["n"] for r in rows}
    z = [[cells.get((t, v), 0) for v in verdicts] for t in truths]
    return go.Figure(
        go.Heatmap(z=z, x=verdicts, y=truths, text=z, texttemplate="%{text}", colorscale="Blues"),
        layout={"xaxis": {"title": "judge's verdict"}, "yaxis": {"title": "environment"}},
    )


def _cost(rows: Rows) -> Any:
    import plotly.graph_objects as go

    per = [(r["cost"] or 0.0) / r["verified"] if r["verified"] else 0.0 for r in rows]
    text = [f"${p:.4f} ({r['verified']} verified)" for p, r in zip(per, rows, strict=True)]
    return go.Figure(go.Bar(x=[r["label"] for r in rows], y=per, text=text, textposition="auto"))


def _counts(rows: Rows) -> Any:
    import plotly.graph_objects as go

    return go.Figure(go.Bar(x=[r["n"] for r in rows], y=[r["label"] for r in rows], orientation="h"))


def _vertical_counts(rows: Rows) -> Any:
    import plotly.graph_objects as go

    return go.Figure(go.Bar(x=[r["label"] for r in rows], y=[r["n"] for r in rows]))


BUILDERS: dict[str, Callable[[Rows], Any]] = {
    "success_by_env": _rate_bars,
    "success_by_source": _rate_bars,
    "success_by_policy": _rate_bars,
    "effort": _effort,
    "lengths": _histogram,
    "rewards": _histogram,
    "verifier_scores": _histogram,
    "judge": _judge,
    "cost": _cost,
    "failures": _counts,
    "difficulty": _vertical_counts,
}


def render(data: dict[str, Rows], title: str) -> str:
    """The report's HTML: plotly.js inline once, one div per figure (`data-plot` = its name)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    sections = []
    for name, build in BUILDERS.items():
        rows = data.get(name, [])
        fig = build(rows)
        fig.update_layout(title=TITLES[name], height=360, margin={"t": 60, "b": 40, "l": 60, "r": 20})
        if not rows:
            fig.add_annotation(
                text="no data for this plot in this run",
                showarrow=False,
                x=0.5,
                y=0.5,
                xref="paper",
                yref="paper",
            )
        div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{name}")
        sections.append(f'<section class="plot" data-plot="{name}">{div}</section>')
    runs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in r) + "</tr>"
        for r in data.get("runs", [])
    )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (data.get("runs") or [{}])[0])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style>
<script>{get_plotlyjs()}</script></head>
<body><h1>{html.escape(title)}</h1>
<table><tr>{head}</tr>{runs}</table>
<div class="grid">{"".join(sections)}</div></body></html>
"""


def write_report(out: Path, dest: Path, run_id: str | None, catalog: str | None = None) -> Path:
    from trajforge.store.lake import READER_LOCK_TIMEOUT_S, Lake, LakeError
    from trajforge.store.report import report_data

    with Lake.open(out, read_only=True, lock_timeout_s=READER_LOCK_TIMEOUT_S, catalog=catalog) as lake:
        if run_id is not None and not lake.has_run(run_id):
            raise LakeError(f"--run {run_id}: no such run in the lake at {out}; see `trajforge runs`")
        data = report_data(lake, run_id)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "report.html"
    tmp = dest / ".report.html.tmp"
    tmp.write_text(
        render(data, f"trajforge report: run {run_id}" if run_id else "trajforge report: all runs")
    )
    tmp.replace(path)
    return path
