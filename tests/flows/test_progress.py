"""The run's live view: a panel on a terminal, plain lines elsewhere, with the figures a user
watches (items done of the total, successes, rates, cost, failures by reason, ETA)."""

from __future__ import annotations

import io

from trajforge.flows.progress import RunProgress

STEP = {
    "trajectories": 4,
    "successes": 3,
    "total:env_steps": 40,
    "total:tokens_in": 900,
    "total:tokens_out": 100,
    "total:cost_usd": 0.25,
    "failed:search:timeout": 1,
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_on_a_terminal():
    out = io.StringIO()
    progress = RunProgress("r1", items=10, stream=out)
    progress.already_done(2, {"trajectories": 2, "successes": 2})  # committed by a killed attempt
    progress.set_stage("step 2/5: pipeline")
    progress.step_done(4, STEP)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "run r1: step 2/5: pipeline"
    assert lines[1].startswith("run r1: 6/10 items, 6 trajectories, 5 successes, ")
    assert "$0.2500" in lines[1] and "failures: search:timeout x1" in lines[1]
    figures = progress.figures()
    assert figures["env_steps_per_s"] > 0 and figures["tokens_per_s"] > figures["env_steps_per_s"]
    assert figures["eta_s"] is not None and figures["eta_s"] >= 0  # 4 more items at this attempt's rate


def test_a_live_panel_on_a_terminal():
    out = Terminal()
    progress = RunProgress("r1", items=10, stream=out)
    progress.step_done(4, STEP)
    progress.close()
    shown = out.getvalue()
    assert "\x1b[" in shown  # drawn, not printed line by line
    for label in ("items done", "4/10", "successes", "env steps/s", "tokens/s", "cost so far", "ETA"):
        assert label in shown
    assert "search:timeout x1" in shown
