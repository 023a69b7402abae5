"""Seeing a run while it runs: a live panel (rich) on a terminal, one plain line per event
elsewhere (CI, Prefect workers, a pipe). Fed by the flow at each stage and each committed step,
from the counts validation makes (`flows.run.validate`): items done of the total, successes,
env steps/s, tokens/s, cost so far, failures by reason, ETA."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import IO, Any

log = logging.getLogger("trajforge.progress")


class RunProgress:
    def __init__(self, run_id: str, items: int, stream: IO[str] | None = None) -> None:
        self.run_id = run_id
        self.items = items  # (task, policy) items of the whole run
        self.done = 0  # items in committed steps
        self.resumed = 0  # of which were committed by an earlier attempt
        self.counts: Counter = Counter()
        self.stage = "planning"
        self.started = time.monotonic()
        self.stream = stream or sys.stderr
        self._live: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._panel(), console=Console(file=self.stream), refresh_per_second=2)
            self._live.start()

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._show(f"run {self.run_id}: {stage}")

    def already_done(self, items: int, counts: dict[str, Any]) -> None:
        """Steps an earlier attempt committed: counted, but not in this attempt's rates."""
        self.done += items
        self.resumed += items
        self.counts.update(counts)

    def step_done(self, items: int, counts: dict[str, Any]) -> None:
        self.done += items
        self.counts.update(counts)
        self._show(self.line())

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._panel())
            self._live.stop()

    def figures(self) -> dict[str, Any]:
        c, wall = self.counts, max(time.monotonic() - self.started, 1e-6)
        here = self.done - self.resumed
        eta = (self.items - self.done) * wall / here if here else None
        failures = Counter({k.removeprefix("failed:"): v for k, v in c.items() if k.startswith("failed:")})
        return {
            "items": f"{self.done}/{self.items}",
            "trajectories": c["trajectories"],
            "successes": c["successes"],
            "env_steps_per_s": c["total:env_steps"] / wall,
            "tokens_per_s": (c["total:tokens_in"] + c["total:tokens_out"]) / wall,
            "cost_usd": c["total:cost_usd"],
            "failures": dict(failures.most_common(5)),
            "eta_s": eta,
        }

    def line(self) -> str:
        f = self.figures()
        failures = ", ".join(f"{k} x{v}" for k, v in f["failures"].items()) or "none"
        eta = "?" if f["eta_s"] is None else f"{f['eta_s']:.0f} s"
        return (
            f"run {self.run_id}: {f['items']} items, {f['trajectories']} trajectories, "
            f"{f['successes']} successes, {f['env_steps_per_s']:.1f} env steps/s, "
            f"{f['tokens_per_s']:.0f} tokens/s, ${f['cost_usd']:.4f}, failures: {failures}, ETA {eta}"
        )

    def _show(self, line: str) -> None:
        if self._live is not None:
            self._live.update(self._panel())
        else:  # written, not printed: the flow's log_prints would turn a print into a (hidden) log
            self.stream.write(line + "\n")
            self.stream.flush()

    def _panel(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        f = self.figures()
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        table.add_row("stage", self.stage)
        table.add_row("items done", f"{f['items']} (task, policy)")
        table.add_row("trajectories", str(f["trajectories"]))
        table.add_row("successes", str(f["successes"]))
        table.add_row("env steps/s", f"{f['env_steps_per_s']:.1f}")
        table.add_row("tokens/s", f"{f['tokens_per_s']:.0f}")
        table.add_row("cost so far", f"${f['cost_usd']:.4f}")
        table.add_row("failures", ", ".join(f"{k} x{v}" for k, v in f["failures"].items()) or "none")
        table.add_row("ETA", "?" if f["eta_s"] is None else f"{f['eta_s']:.0f} s")
        return Panel(table, title=f"trajforge run {self.run_id}", expand=False)
