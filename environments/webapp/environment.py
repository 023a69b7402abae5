"""The built-in shop as an environment: a real Chromium (browser/) on the shop's server,
tasks from templates, success decided by checkers that read the server's state."""

from __future__ import annotations

import copy
from typing import Any

from trajforge.environments.base import EnvironmentFailure, Reset, StepOutcome, TaskSpec
from trajforge.environments.browser import LocalSiteEnvironment, quote
from trajforge.environments.goals import Fact, PredicateKind
from trajforge.environments.webapp import goals
from trajforge.environments.webapp.server import ShopServer
from trajforge.environments.webapp.tasks import (
    ShopTask,
    check_template,
    chosen_templates,
    make_task,
    template_specs,
)


class WebAppEnvironment(LocalSiteEnvironment):
    name = "webapp"
    supports_snapshot = False

    def __init__(self, templates: list[str] | None = None, **browser_options: Any) -> None:
        """`browser_options` are BrowserEnvironment's (screenshots, timeouts, headless, ...)."""
        super().__init__(**browser_options)
        self._config = {"templates": templates, **browser_options}
        self.templates = chosen_templates(templates)
        self._shop_task: ShopTask | None = None
        self._plan_pos: int | None = 0  # plan steps followed so far; None once the agent left the plan
        self._free = False  # free play: a goal (environments.goals) judges, not the template

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        return template_specs(self.templates, n, seed)

    def reset(self, task: TaskSpec) -> Reset:
        check_template(task)
        return super().reset(task)

    def _serve(self) -> ShopServer:
        return ShopServer()

    def step(self, action: str) -> StepOutcome:
        expected = self._next_planned()
        outcome = super().step(action)
        self._plan_pos = self._plan_pos + 1 if expected == action and self._plan_pos is not None else None
        return outcome

    def walkthrough(self) -> list[str] | None:
        """The next step of the template's known solution, resolved to an element of the page,
        while the episode has followed it; None once it has not."""
        action = self._next_planned()
        return None if action is None else [action]

    def _next_planned(self) -> str | None:
        if self._shop_task is None or self._plan_pos is None or self._plan_pos >= len(self._shop_task.plan):
            return None
        verb, role, name, text = self._shop_task.plan[self._plan_pos]
        # A select's accessible name runs on into its options ("Category All Bags ...").
        ref = next(
            (
                el.ref
                for el in self.elements
                if el.role == role
                and (el.name == name or (role == "select" and el.name.startswith(name + " ")))
            ),
            None,
        )
        if ref is None:
            return None
        return f"{verb} {ref} {quote(text)}" if verb in ("type", "select") else f"{verb} {ref}"

    # ---- the adapter ----

    async def _begin(self, page: Any, task: TaskSpec) -> str:
        assert self._site is not None
        shop = self._site.reset(task.seed)  # a fresh shop each episode: replays are exact
        self._shop_task = make_task(task.env_task, shop, task.seed)
        self._plan_pos = 0
        await page.goto(self._site.origin + "/", wait_until="load")
        return self._shop_task.instruction

    async def _judge(self, page: Any) -> tuple[float, bool, bool | None, dict[str, Any]]:
        assert self._site is not None and self._shop_task is not None
        if self._free:
            return 0.0, False, None, {}
        with self._site.lock:
            shop = self._site.shop
            if self._shop_task.check(shop):
                return 1.0, True, True, {"checker": "passed"}
            if shop.orders:  # an order is final: a wrong one fails the task
                return 0.0, True, False, {"checker": "wrong order placed"}
        return 0.0, False, None, {}

    def _type_values(self) -> list[str]:
        if self._free and self._site is not None:
            return self.typeable_values()
        return list(self._shop_task.fields.values()) if self._shop_task else []

    # ---- the goal contract (environments.goals) ----

    def predicate_kinds(self) -> list[PredicateKind]:
        return list(goals.KINDS)

    def _shop(self) -> Any:
        if self._site is None:
            raise EnvironmentFailure("webapp: no episode is running; call reset(task) first")
        return self._site.shop

    def facts(self) -> frozenset[Fact]:
        shop = self._shop()
        with self._site.lock:
            return goals.facts(shop)

    def slot_values(self) -> dict[str, list[str]]:
        return goals.slot_values(self._shop())

    def typeable_values(self) -> list[str]:
        return goals.typeable_values(self._shop())

    def location(self) -> str:
        """Where the browser is (the page's path): exploration tells pages of one state apart."""
        return str(self._info().get("url", "")).split("?")[0]

    def save_state(self) -> Any:
        """The shop's state and the page's address: exploration returns to a state with one
        navigation instead of replaying its prefix (a server-side snapshot, not `snapshot()`:
        fields typed on the page are not kept)."""
        shop = self._shop()
        with self._site.lock:
            return copy.deepcopy(shop), self._page.url

    def load_state(self, state: Any, actions: list[str]) -> None:
        """Back to a saved state; `actions` (its prefix from reset) is what a crash replays."""
        shop, url = state
        with self._site.lock:
            self._site.shop = copy.deepcopy(shop)
        self._run(self._goto(url))
        self._actions, self._done, self._plan_pos = list(actions), False, None

    async def _goto(self, url: str) -> None:
        await self._page.goto(url, wait_until="load")
        await self._settled(self._observe)

    def free_play(self, on: bool) -> None:
        self._free = on

    def goal_templates(self) -> dict[str, Any]:
        return goals.templates(self._shop(), self.templates)

    def vocabulary(self) -> dict[str, list[str]]:
        return goals.vocabulary()
