"""MiniWoB++ tasks (the `miniwob` package's pages) in the sandboxed browser of browser/.

The package's `html/` folder is served on 127.0.0.1 (a free port, a daemon thread, stopped
by close()); the browser may reach nothing else. A task's `env_task` is its page name
("click-button") and its seed goes to `Math.seedrandom`, so a (task, seed) always poses the
same problem: MCTS branches by replaying from reset.

The reward is MiniWoB's raw reward (in [-1, 1], not scaled by time) on the step that ends the
episode and 0 on every other step, so an episode's total stays in [-1, 1]; success is a raw
reward > 0. Episodes do not time out while a slow search thinks (`episode_max_time`).
"""

from __future__ import annotations

import functools
import random
import re
from http.server import SimpleHTTPRequestHandler
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from trajforge.environments.base import ConfigError, Reset, TaskSpec
from trajforge.environments.browser import LocalSiteEnvironment, positive_seconds
from trajforge.environments.loopback import LoopbackServer

DEFAULT_TASKS = [
    "click-button",
    "click-checkboxes",
    "enter-text",
    "click-tab-2",
    "login-user",
    "choose-list",
    "click-link",
    "click-dialog",
    "click-dialog-2",
    "focus-text",
    "click-option",
    "enter-password",
    "click-test",
    "click-test-2",
    "click-button-sequence",
    "enter-text-2",
    "click-tab",
    "click-collapsible",
]

# setTimeout overflows past 2**31 - 1 ms (~24.8 days) and would fire at once.
_MAX_EPISODE_TIME_S = 2_000_000

_START_JS = """
({seed, mode, maxTimeMs}) => {
  Math.seedrandom(seed);
  if (core.setDataMode) core.setDataMode(mode);
  core.EPISODE_MAX_TIME = maxTimeMs;
  core.startEpisodeReal();
  core.hideDisplay();  // its countdown would make observations depend on time
  return WOB_TASK_READY;
}
"""
_RESULT_JS = "() => [WOB_DONE_GLOBAL, WOB_RAW_REWARD_GLOBAL, WOB_REWARD_REASON]"


def html_root() -> Path:
    """The miniwob package's html/ folder (found without importing the package)."""
    spec = find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("env: the miniwob environment needs MiniWoB++; pip install 'trajforge[web]'")
    return Path(next(iter(spec.submodule_search_locations))) / "html"


def available_tasks() -> list[str]:
    return sorted(p.stem for p in (html_root() / "miniwob").glob("*.html"))


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a task page loads ~10 files

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _fields(task: str, utterance: Any) -> tuple[str, list[str]]:
    """The instruction and the values it names (what a form may need typed)."""
    if isinstance(utterance, dict):
        return str(utterance["utterance"]), [str(v) for v in utterance["fields"].values()]
    text = str(utterance)
    try:
        from miniwob.fields import get_field_extractor

        values = [value for _, value in get_field_extractor(task)(text)]
    except (KeyError, ValueError):  # no extractor for the task, or an utterance it does not parse
        values = re.findall(r'"([^"]*)"', text)
    if task == "enter-text-2":  # "Type "Abc" in all lower case letters": offer both cases
        values = [v for text_value in values[:1] for v in (text_value.lower(), text_value.upper())]
    return text, values


class MiniWoBEnvironment(LocalSiteEnvironment):
    name = "miniwob"
    supports_snapshot = False
    # A run of MiniWoB alone takes these unless the config or a flag sets them: every default
    # task, the random policy (MiniWoB knows no solutions, so the oracle would act at random
    # too), short episodes, and leaf rollouts deep enough for forms (login-user needs them).
    run_defaults: dict[str, Any] = {
        "tasks": len(DEFAULT_TASKS),
        "policies": ["random"],
        "max_steps": 6,
        "mcts": {"rollout_depth": 3, "c_puct": 1.0},
    }

    def __init__(
        self,
        tasks: list[str] | None = None,
        episode_max_time: float = 86_400.0,
        data_mode: str = "train",
        **browser_options: Any,
    ) -> None:
        """`browser_options` are BrowserEnvironment's (screenshots, timeouts, headless, ...)."""
        browser_options.setdefault("viewport", (400, 300))  # the task area is 160x210 px
        super().__init__(**browser_options)
        self._config = {"tasks": tasks, "episode_max_time": episode_max_time, "data_mode": data_mode}
        self._config.update(browser_options)
        self._known = known = set(available_tasks())
        self.tasks = list(DEFAULT_TASKS if tasks is None else tasks)
        unknown = [t for t in self.tasks if t not in known]
        if unknown:
            raise ConfigError(
                f"tasks: {unknown!r} are not MiniWoB++ tasks; use names such as "
                f"{', '.join(DEFAULT_TASKS[:4])} (all: html/miniwob/*.html of the miniwob package)"
            )
        if not self.tasks:
            raise ConfigError("tasks: the list is empty; name at least one task, e.g. ['click-button']")
        if positive_seconds("episode_max_time", episode_max_time) > _MAX_EPISODE_TIME_S:
            raise ConfigError(
                f"episode_max_time: {episode_max_time!r} exceeds {_MAX_EPISODE_TIME_S} seconds "
                "(JavaScript timers overflow); use e.g. 86400"
            )
        self.episode_max_time = float(episode_max_time)
        self.data_mode = data_mode
        self._values: list[str] = []

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        if n < 0:
            raise ConfigError(f"tasks: n={n} is negative; ask for 0 or more tasks")
        rng = random.Random(seed)
        return [TaskSpec(self.tasks[i % len(self.tasks)], seed=rng.randrange(2**31)) for i in range(n)]

    def reset(self, task: TaskSpec) -> Reset:
        if task.env_task not in self._known:
            raise ConfigError(f"env_task: {task.env_task!r} is not a MiniWoB++ task, e.g. 'click-button'")
        return super().reset(task)

    def _serve(self) -> LoopbackServer:
        return LoopbackServer(
            functools.partial(_QuietHandler, directory=str(html_root())), name="miniwob-http"
        )

    # ---- the adapter ----

    async def _begin(self, page: Any, task: TaskSpec) -> str:
        assert self._site is not None
        await page.goto(f"{self._site.origin}/miniwob/{task.env_task}.html", wait_until="load")
        args = {"seed": task.seed, "mode": self.data_mode, "maxTimeMs": int(self.episode_max_time * 1000)}
        if await page.evaluate(_START_JS, args) is not True:
            await page.wait_for_function("() => WOB_TASK_READY === true")
        utterance = await page.evaluate("() => core.getUtterance()")
        instruction, self._values = _fields(task.env_task, utterance)
        return instruction

    async def _judge(self, page: Any) -> tuple[float, bool, bool | None, dict[str, Any]]:
        done, raw, reason = await page.evaluate(_RESULT_JS)
        if not done:
            return 0.0, False, None, {}
        raw = max(-1.0, min(1.0, float(raw)))
        return raw, True, raw > 0, {"raw_reward": raw, "reward_reason": reason}

    def _type_values(self) -> list[str]:
        return self._values
