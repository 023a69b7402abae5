"""`python`: code as actions (CodeAct). Each action is a cell run in the episode's persistent
interpreter inside the sandbox (code/sandbox.py); the observation is its output and errors. The
action `submit` runs the task's hidden tests in a fresh sandbox on the cells the interpreter holds
(replayed, so nothing the cells did to the live interpreter can touch the tests), and their
verdict is the episode's success.

Admissible actions (for searches without a model) are the task's candidate cells and `submit`;
the walkthrough is the canonical solution, then `submit`. There is no snapshot of a process:
MCTS branches by replaying the cells from reset (a fresh interpreter).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from trajforge.environments.base import ConfigError, Reset, StepOutcome, TaskSpec
from trajforge.environments.code.sandbox import CellResult, Isolation, Limits, Sandbox
from trajforge.environments.code.tasks import CodeTask, candidate_cells, find, suite_tasks

SUBMIT = "submit"
MAX_OBSERVATION = 4000


class PythonEnvironment:
    name = "python"
    supports_snapshot = False
    # A solution takes two steps (a cell, submit); every branch of a tree restarts an interpreter.
    run_defaults: dict[str, Any] = {
        "tasks": 5,
        "max_steps": 3,
        "budget": {"env_steps": 60},
        "mcts": {"rollout_depth": 1},
    }

    def __init__(
        self,
        suite: str = "humaneval",
        tasks: list[str] | None = None,
        isolation: Isolation = "bwrap",
        cell_timeout_s: float = 10.0,
        cell_cpu_s: int = 5,
        memory_mb: int = 512,
        processes: int = 32,
        file_mb: int = 16,
        output_chars: int = 20_000,
    ) -> None:
        self.limits = Limits(
            cell_timeout_s=cell_timeout_s,
            cell_cpu_s=cell_cpu_s,
            memory_mb=memory_mb,
            processes=processes,
            file_mb=file_mb,
            output_chars=output_chars,
        )
        self.pool = [find(name) for name in tasks] if tasks else list(suite_tasks(suite))
        if not self.pool:
            raise ConfigError("tasks: [] is empty; name at least one task or leave it out")
        self.sandbox = Sandbox(self.limits, isolation)  # refuses a missing bwrap here, before a run
        self._grader: Sandbox | None = None
        self.task: CodeTask | None = None
        self._cells: list[str] = []  # cells the live interpreter holds (since its last start)
        self._done = False

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        order = sorted(self.pool, key=lambda t: t.name)
        random.Random(seed).shuffle(order)
        return [TaskSpec(order[i % len(order)].name, seed=seed) for i in range(n)]

    def reset(self, task: TaskSpec) -> Reset:
        self.task = find(task.env_task)
        self.sandbox.restart()
        self._cells, self._done = [], False
        version = ".".join(map(str, sys.version_info[:2]))
        instruction = (
            f"Implement `{self.task.entry_point}` as specified below; hidden tests will check it.\n\n"
            f"```python\n{self.task.prompt}```"
        )
        observation = (
            f"A Python {version} interpreter is ready (no network; /tmp is your folder). Each message "
            f"you send is a code cell run in it. Send `{SUBMIT}` to run the hidden tests on "
            f"`{self.task.entry_point}`."
        )
        return Reset(observation, instruction)

    def admissible_actions(self) -> list[str]:
        if self.task is None or self._done:
            return []
        return [*candidate_cells(self.task), SUBMIT]

    def step(self, action: str) -> StepOutcome:
        if self.task is None or self._done:
            raise ConfigError("step: the episode is over or never began; call reset first")
        if action.strip() == SUBMIT:
            return self._submit()
        result = self.sandbox.run(action)
        if result.restarted:
            self._cells = []
        elif result.reason in (None, "error"):
            self._cells.append(action)
        return StepOutcome(_observation(result), 0.0, False, None, {"reason": result.reason})

    def _submit(self) -> StepOutcome:
        assert self.task is not None
        self._done = True
        if self._grader is None:
            self._grader = Sandbox(self.limits, self.sandbox.isolation)
        grader = self._grader
        grader.restart()
        for cell in self._cells:
            grader.run(cell)
        verdict = grader.check(self.task.test, self.task.entry_point)
        if verdict.ok:
            return StepOutcome("All hidden tests passed.", 1.0, True, True, {"tests": "passed"})
        last = (verdict.error or "").strip().splitlines()[-1:] or [verdict.reason or "failed"]
        detail = last[0] if verdict.reason == "error" else f"stopped ({verdict.reason})"
        return StepOutcome(f"Hidden tests failed: {detail}", 0.0, True, False, {"tests": verdict.reason})

    def walkthrough(self) -> list[str] | None:
        if self.task is None or self._done:
            return None
        canonical = self.task.canonical_cell
        return [SUBMIT] if canonical in self._cells else [canonical, SUBMIT]

    def snapshot(self) -> Any:
        raise NotImplementedError("python: an interpreter cannot be snapshot; branch by replay")

    def restore(self, state: Any) -> None:
        raise NotImplementedError("python: an interpreter cannot be restored; branch by replay")

    def close(self) -> None:
        self.sandbox.close()
        if self._grader is not None:
            self._grader.close()


def _observation(result: CellResult) -> str:
    text = result.output
    if result.error:
        text += ("\n" if text and not text.endswith("\n") else "") + result.error
    text = text or "(no output)"
    if result.reason not in (None, "error"):  # a limit or the deadline stopped it: say which
        text += f"\n[stopped: {result.reason}]"
    if len(text) > MAX_OBSERVATION:
        half = MAX_OBSERVATION // 2
        text = text[:half] + f"\n[... {len(text) - MAX_OBSERVATION} characters cut ...]\n" + text[-half:]
    return text
