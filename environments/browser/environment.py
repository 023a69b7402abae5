"""The sandboxed browser behind the Environment protocol (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from trajforge.environments.base import ConfigError, EnvironmentFailure, Reset, StepOutcome, TaskSpec
from trajforge.environments.browser.actions import parse_action, perform, quote
from trajforge.environments.browser.dom import Element, read_elements
from trajforge.environments.browser.pool import (
    CLOSE_TIMEOUT_S,
    BrowserDied,
    BrowserHung,
    BrowserPool,
    find_chromium,
    first_line,
)
from trajforge.environments.browser.sandbox import (
    ERROR_PAGE,
    check_origin,
    context_options,
    origin_of,
    seal,
    watch,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name}: {value!r} must be a positive number of seconds, e.g. {name}=10")
    return float(value)


def _death_reason(exc: BrowserDied) -> str:
    """The failure's code when the replay died too: a hang is a timeout, else the browser died."""
    return (
        "env_timeout"
        if isinstance(exc, BrowserHung) or isinstance(exc.__cause__, BrowserHung)
        else "browser_died"
    )


class BrowserEnvironment:
    """A sandboxed browser on `start_urls` (one task per URL; the instruction comes with the task).

    Subclasses adapt it to a web app by overriding `_allowed`, `_begin`, `_judge` (coroutines
    on the page), `_type_values` and `_display_url`.
    """

    name = "browser"
    supports_snapshot = False
    observe_root = "body"

    def __init__(
        self,
        allowed_origins: list[str] | None = None,
        start_urls: list[str] | None = None,
        screenshots: bool = False,
        action_timeout_s: float = 5.0,
        navigation_timeout_s: float = 15.0,
        step_timeout_s: float = 120.0,
        headless: bool = True,
        executable_path: str | None = None,
        viewport: tuple[int, int] = (1280, 720),
    ) -> None:
        self._config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.allowed_origins = [check_origin(o) for o in allowed_origins or []]
        self.start_urls = list(start_urls or [])
        for url in self.start_urls:
            if origin_of(url) not in self.allowed_origins:
                raise ConfigError(f"start_urls: {url!r} is outside allowed_origins; add {origin_of(url)!r}")
        self.screenshots = bool(screenshots)
        self.action_timeout_s = positive_seconds("action_timeout_s", action_timeout_s)
        self.navigation_timeout_s = positive_seconds("navigation_timeout_s", navigation_timeout_s)
        self.step_timeout_s = positive_seconds("step_timeout_s", step_timeout_s)
        self.headless = headless
        self.executable_path = find_chromium(executable_path)
        self.viewport = {"width": int(viewport[0]), "height": int(viewport[1])}
        self._pool: BrowserPool | None = None
        self._context: Any = None
        self._page: Any = None
        self._crashed = False
        self._task: TaskSpec | None = None
        self._actions: list[str] = []
        self._recovered = False
        self._blocked = 0
        self._elements: dict[str, Element] = {}
        self._done = False
        self._success: bool | None = None

    # Pickles as its configuration (a Beam DoFn may carry it); the browser starts at reset.
    def __getstate__(self) -> dict[str, Any]:
        return dict(self._config)

    def __setstate__(self, config: dict[str, Any]) -> None:
        self.__init__(**config)  # type: ignore[misc]

    # ---- what subclasses adapt ----

    def _allowed(self) -> list[str]:
        """Origins the page may reach (evaluated at each episode)."""
        return self.allowed_origins

    async def _begin(self, page: Any, task: TaskSpec) -> str:
        """Open the task's page and return its instruction."""
        await page.goto(task.env_task, wait_until="load")
        return task.instruction

    async def _judge(self, page: Any) -> tuple[float, bool, bool | None, dict[str, Any]]:
        """(reward, done, success, info) after an action."""
        return 0.0, False, None, {}

    def _type_values(self) -> list[str]:
        """Texts offered as `type` actions for every editable element."""
        return []

    def _display_url(self, url: str) -> str:
        return url

    # ---- the protocol ----

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        if not self.start_urls:
            raise ConfigError("start_urls: the browser environment has no tasks; give it start_urls")
        return [TaskSpec(self.start_urls[i % len(self.start_urls)], seed=seed + i) for i in range(n)]

    def reset(self, task: TaskSpec) -> Reset:
        self._task, self._actions, self._recovered = task, [], False
        try:
            return self._run(self._start(task))
        except BrowserDied as exc:
            return self._retry(lambda: self._run(self._start(task)), exc)

    def step(self, action: str) -> StepOutcome:
        if self._task is None:
            raise EnvironmentFailure(f"{self.name}: no episode is running; call reset(task) first")
        try:
            outcome = self._run(self._step(action))
        except BrowserDied as exc:
            outcome = self._retry(lambda: self._run(self._replay(action)), exc)
        self._actions.append(action)
        return outcome

    def admissible_actions(self) -> list[str]:
        if self._done or self._page is None:
            return []
        values = [v for v in dict.fromkeys(self._type_values()) if v]
        actions: list[str] = []
        for el in self._elements.values():
            if el.role == "select":
                actions += [f"select {el.ref} {quote(o)}" for o in dict.fromkeys(el.options)]
            else:
                actions.append(f"click {el.ref}")
            if el.editable:
                actions += [f"type {el.ref} {quote(v)}" for v in values]
        if any(el.focused and el.editable for el in self._elements.values()):
            actions.append('press "Enter"')
        return actions

    def walkthrough(self) -> list[str] | None:
        return None

    def snapshot(self) -> Any:
        raise NotImplementedError(f"{self.name}: no snapshots; branch by replaying from reset")

    def restore(self, state: Any) -> None:
        raise NotImplementedError(f"{self.name}: no snapshots; branch by replaying from reset")

    def close(self) -> None:
        if self._pool is not None:
            with suppress(Exception):
                self._pool.run(self._close_context(), self.navigation_timeout_s)
            self._pool.release()
            self._pool = None
        self._page, self._elements, self._task = None, {}, None

    # ---- what callers may inspect ----

    @property
    def blocked_requests(self) -> int:
        """Attempts to leave the sandbox in the current episode."""
        return self._blocked

    @property
    def elements(self) -> list[Element]:
        """The interactive elements of the latest observation."""
        return list(self._elements.values())

    def on_page(self, work: Callable[[Any], Any]) -> Any:
        """await work(page) on the browser's loop: the current page, for adapters and tests."""

        async def call() -> Any:
            return await work(self._page)

        return self._run(call())

    def chromium_pids(self) -> list[int]:
        """The running Chromium's processes (the browser first), empty when none runs."""
        return self._pool.pids() if self._pool else []

    def kill_browser(self) -> None:
        """SIGKILL Chromium (tests use it to crash every episode in flight)."""
        if self._pool is not None:
            self._pool.kill()

    # ---- episodes ----

    def _run(self, coro: Any) -> Any:
        """Run one reset or step on the pool; a step that hangs past step_timeout_s is BrowserDied."""
        if self._pool is None:
            try:
                self._pool = BrowserPool.acquire(
                    self.executable_path, self.headless, self.navigation_timeout_s
                )
            except EnvironmentFailure:
                coro.close()
                raise
        try:
            return self._pool.run(coro, self.step_timeout_s)
        except BrowserHung as exc:
            if self._pool.hung():  # the browser, not just this page: every episode in it is replayed
                log.warning("%s: Chromium does not answer; killing it", self.name)
                self._pool.kill()
            else:  # a hung context goes; the replay opens a fresh one
                with suppress(BrowserDied):
                    self._pool.run(self._close_context(), CLOSE_TIMEOUT_S)
            raise BrowserDied(f"the step hung for more than step_timeout_s={self.step_timeout_s:g}") from exc

    async def _start(self, task: TaskSpec) -> Reset:
        self._done, self._success, self._blocked, self._elements = False, None, 0, {}
        assert self._pool is not None
        try:
            browser = await self._pool.browser()
        except EnvironmentFailure as exc:
            raise EnvironmentFailure(f"{self.name}: {exc}", reason=exc.reason) from exc
        async with self._guard(f"reset of {task.env_task!r}"):
            await self._new_page(browser)
            instruction = await self._begin(self._page, task)
            observation, info = await self._settled(self._observe)
        return Reset(observation, instruction, info)

    async def _step(self, action: str) -> StepOutcome:
        if self._done:
            return StepOutcome("The episode is over.", 0.0, True, self._success, self._info())
        async with self._guard(f"step {action!r}"):
            error = await self._act(action)
            reward, done, success, extra = await self._settled(lambda: self._judge(self._page))
            self._done, self._success = done, success
            observation, info = await self._settled(self._observe)
        if error:
            observation = f"Invalid action: {error}\n\n{observation}"
        info.update(extra, valid_action=error is None)
        if error:
            info["error"] = error
        return StepOutcome(observation, reward, done, success, info)

    async def _replay(self, action: str) -> StepOutcome:
        assert self._task is not None
        await self._start(self._task)
        for previous in self._actions:
            await self._step(previous)
        return await self._step(action)

    def _retry(self, attempt: Callable[[], T], exc: BrowserDied) -> T:
        what = self._task.env_task if self._task else "?"
        if self._recovered:
            raise EnvironmentFailure(
                f"{self.name}: the browser died again in {what!r}: {exc}", reason=_death_reason(exc)
            ) from exc
        self._recovered = True
        log.warning("%s: browser died in %r (%s); replaying the episode in a fresh one", self.name, what, exc)
        try:
            return attempt()
        except BrowserDied as again:
            raise EnvironmentFailure(
                f"{self.name}: the browser died twice in {what!r}: {exc}; then: {again}",
                reason=_death_reason(again),
            ) from again

    # ---- the context of an episode ----

    async def _close_context(self) -> None:
        context, self._context, self._page = self._context, None, None
        if context is not None:
            with suppress(Exception):
                await asyncio.wait_for(context.close(), CLOSE_TIMEOUT_S)

    async def _new_page(self, browser: Any) -> None:
        await self._close_context()
        allowed = self._allowed()
        self._context = context = await browser.new_context(
            viewport=self.viewport, **context_options(allowed)
        )
        context.set_default_timeout(self.action_timeout_s * 1000)
        context.set_default_navigation_timeout(self.navigation_timeout_s * 1000)
        await seal(context, allowed, self._count)
        self._page = page = await context.new_page()
        self._crashed = False
        page.on("crash", lambda _: setattr(self, "_crashed", True))
        watch(context, page, self._count)

    def _count(self) -> None:
        self._blocked += 1

    def _dead(self) -> bool:
        page, context = self._page, self._context
        browser = context.browser if context is not None else None
        return (
            browser is None or not browser.is_connected() or self._crashed or page is None or page.is_closed()
        )

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Playwright errors become BrowserDied (browser gone) or EnvironmentFailure (this item failed)."""
        from playwright.async_api import Error as PlaywrightError

        try:
            yield
        except PlaywrightError as exc:
            if self._dead():
                raise BrowserDied(first_line(exc)) from exc
            raise EnvironmentFailure(
                f"{self.name}: {what} failed: {first_line(exc)}", reason="page_error"
            ) from exc

    # ---- observing and acting ----

    async def _settled(self, read: Callable[[], Awaitable[T]]) -> T:
        """read() once the page has loaded, again if a navigation replaced the page meanwhile."""
        from playwright.async_api import Error as PlaywrightError

        for attempt in range(3):
            await self._page.wait_for_load_state("load")
            try:
                return await read()
            except PlaywrightError as exc:
                if attempt == 2 or self._dead() or "context was destroyed" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    async def _observe(self) -> tuple[str, dict[str, Any]]:
        page = self._page
        title, self._elements = await read_elements(page, self.observe_root)
        if page.url.startswith(ERROR_PAGE):
            url, tree = "(this page could not be loaded; it may be outside the sandbox)", ""
        else:
            url, tree = self._display_url(page.url), await page.locator(self.observe_root).aria_snapshot()
        lines = [f"URL: {url}", f"Title: {title}", "", tree, "", "Interactive elements:"]
        lines += [el.describe() for el in self._elements.values()] or ["(none)"]
        info: dict[str, Any] = self._info()
        if self.screenshots:
            info["screenshot"] = await page.screenshot(type="png")
        return "\n".join(lines), info

    def _info(self) -> dict[str, Any]:
        url = self._page.url if self._page is not None and not self._page.is_closed() else ""
        return {"blocked_requests": self._blocked, "url": self._display_url(url)}

    async def _act(self, text: str) -> str | None:
        """Perform an action; what was wrong with it, or None."""
        from playwright.async_api import Error as PlaywrightError

        try:
            action = parse_action(text)
        except ValueError as exc:
            return str(exc)
        element = self._elements.get(action.ref) if action.ref else None
        if action.ref and element is None:
            return f"no element {action.ref} on this page; use a ref from the latest observation"
        try:
            return await perform(self._page, action, element)
        except PlaywrightError as exc:
            if self._dead():
                raise
            return f"{action.verb} failed: {first_line(exc)}"
