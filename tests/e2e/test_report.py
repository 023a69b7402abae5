"""`trajforge report`: one HTML file that a browser renders offline, every plot drawn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.store.conftest import batch, run_row, task, trajectory
from trajforge.report import BUILDERS
from trajforge.schemas.arrow import FAILURES, to_table
from trajforge.schemas.records import Failure
from trajforge.store.lake import Lake

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _lake(out: Path) -> None:
    rows = [trajectory(i, success=i % 3 != 0, steps=2 + i % 4) for i in range(12)]
    for i, row in enumerate(rows):
        row.update(policy=("oracle", "random")[i % 2], env_steps=row["num_steps"], cost_usd=0.01 * i)
        row.update(verifier_verdict=("pass", "fail")[i % 4 == 0], verifier_score=(i % 5) / 4)
    failures = [
        Failure(item_id=f"f{i}", task_id="task-0", stage="search", reason=r, run_id="run-1").row()
        for i, r in enumerate(["timeout", "timeout", "env_crash"])
    ]
    tables = batch(rows, [task(i) for i in range(3)]) | {"failures": to_table(failures, FAILURES)}
    with Lake.open(out) as lake:
        lake.commit(tables, run_row())


def test_the_report_renders_every_plot_offline(tmp_path):
    from playwright.sync_api import sync_playwright

    out, dest = tmp_path / "data", tmp_path / "report"
    _lake(out)
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "trajforge.cli",
            "report",
            "--out",
            str(out),
            "--dest",
            str(dest),
            "--run",
            "run-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    page_file = dest / "report.html"
    assert made.stdout.strip() == f"wrote {page_file}"

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_function(
                f"document.querySelectorAll('section.plot .main-svg').length >= {len(BUILDERS)}",
                timeout=30_000,
            )
            drawn = page.evaluate(
                """() => { const MARKS = '.point, .bars path, .heatmaplayer image, .heatmaplayer path';
                return [...document.querySelectorAll('section.plot')].map(s => ({
                    name: s.dataset.plot,
                    svg: s.querySelectorAll('.main-svg').length,
                    marks: s.querySelectorAll(MARKS).length,
                    title: (s.querySelector('.gtitle') || {}).textContent || '',
                })) }"""
            )
        finally:
            browser.close()
    assert errors == []
    assert [r for r in requests if not r.startswith("file://")] == []  # offline: nothing left the file
    assert [d["name"] for d in drawn] == list(BUILDERS)
    empty = {d["name"] for d in drawn if d["marks"] == 0}
    assert all(d["svg"] >= 1 and d["title"] for d in drawn), drawn
    # Every plot with data in this lake drew marks; the lake has no synthesized difficulty bands.
    assert empty <= {"difficulty"}, drawn


def test_report_of_an_unknown_run_is_a_one_line_error(tmp_path):
    out = tmp_path / "data"
    _lake(out)
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "trajforge.cli",
            "report",
            "--out",
            str(out),
            "--dest",
            str(tmp_path / "r"),
            "--run",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 2
    assert made.stderr.strip() == f"error: --run nope: no such run in the lake at {out}; see `trajforge runs`"
    assert not (tmp_path / "r").exists()  # nothing half-written
