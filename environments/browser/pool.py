"""One Chromium per process, driven by Playwright's async API on a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import threading
import time
from contextlib import suppress
from typing import Any

from trajforge.environments.base import ConfigError, EnvironmentFailure
from trajforge.environments.browser.procs import alive, kill_chromium, process_tree
from trajforge.environments.browser.sandbox import launch_args

CLOSE_TIMEOUT_S = 5.0  # closing a context or browser that died may never answer
_PROBE_TIMEOUT_S = 5.0  # a Chromium that answers no CDP call in this time is hung


def find_chromium(executable_path: str | None) -> str:
    path = executable_path or os.environ.get("TRAJFORGE_CHROMIUM") or shutil.which("chromium")
    path = path or shutil.which("chromium-browser") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"executable_path: no Chromium at {path!r}; install it (apt-get install -y chromium) "
            "or pass executable_path=/path/to/chromium"
        )
    return path


class BrowserDied(Exception):
    """Chromium or the page is gone (or a step hung): the episode may be replayed."""


class BrowserHung(BrowserDied):
    """No answer from the browser in time."""


class BrowserPool:
    """One Chromium per process (and per executable/headless), driven by Playwright's async API
    on a thread of its own. Environments in any thread open their contexts on it, so the
    episodes of several threads are in flight in one browser at once. When Chromium dies the
    next episode launches a new one; when the last environment lets go, it stops."""

    _pools: dict[tuple[str, bool], BrowserPool] = {}
    _pools_lock = threading.Lock()

    @classmethod
    def acquire(cls, executable_path: str, headless: bool, launch_timeout_s: float) -> BrowserPool:
        with cls._pools_lock:
            pool = cls._pools.get((executable_path, headless))
            if pool is None:
                pool = cls._pools[(executable_path, headless)] = cls(
                    executable_path, headless, launch_timeout_s
                )
            pool._users += 1
            return pool

    def __init__(self, executable_path: str, headless: bool, launch_timeout_s: float) -> None:
        self.executable_path, self.headless, self.launch_timeout_s = (
            executable_path,
            headless,
            launch_timeout_s,
        )
        self._users = 0
        self._browser: Any = None
        self.browser_pid: int | None = None
        self.launches = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="browser-pool", daemon=True)
        self._thread.start()
        self._launching = asyncio.Lock()
        try:
            self._playwright = self.run(self._start_playwright(), launch_timeout_s)
        except BaseException:
            self._stop_loop()
            raise

    async def _start_playwright(self) -> Any:
        try:
            from playwright.async_api import async_playwright
        except ImportError as exc:
            raise ConfigError(
                "env: the browser environments need Playwright; pip install 'trajforge[web]'"
            ) from exc
        return await async_playwright().start()

    def run(self, coro: Any, timeout_s: float) -> Any:
        """Run a coroutine on the pool's loop and wait at most timeout_s for it (BrowserDied if it hangs)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise BrowserHung(f"no answer within {timeout_s:g}s") from exc

    async def browser(self) -> Any:
        """The running Chromium, launched (again) if there is none or it died."""
        async with self._launching:
            if self._browser is None or not self._browser.is_connected() or not alive(self.browser_pid):
                await self._launch()
            return self._browser

    async def _answers(self) -> bool:
        browser = self._browser
        if browser is None or not browser.is_connected():
            return False
        cdp = await browser.new_browser_cdp_session()
        await cdp.send("Browser.getVersion")
        await cdp.detach()
        return True

    def hung(self) -> bool:
        """Chromium runs but answers no CDP call within _PROBE_TIMEOUT_S."""
        try:
            return not self.run(self._answers(), _PROBE_TIMEOUT_S) and alive(self.browser_pid)
        except BrowserHung:
            return True
        except Exception:  # noqa: BLE001 - gone rather than hung: the next episode relaunches it
            return False

    async def _launch(self) -> None:
        from playwright.async_api import Error as PlaywrightError

        old, self._browser = self._browser, None
        if old is not None:  # closing a killed browser can wait forever: bounded, then killed
            with suppress(Exception):
                await asyncio.wait_for(old.close(), CLOSE_TIMEOUT_S)
        self._kill_tree()
        try:
            browser = await self._playwright.chromium.launch(
                executable_path=self.executable_path,
                headless=self.headless,
                args=launch_args(),
                timeout=self.launch_timeout_s * 1000,
            )
            cdp = await browser.new_browser_cdp_session()
            processes = (await cdp.send("SystemInfo.getProcessInfo"))["processInfo"]
            await cdp.detach()
        except PlaywrightError as exc:
            raise EnvironmentFailure(
                f"could not launch Chromium: {first_line(exc)}", reason="browser_launch"
            ) from exc
        self._browser, self.launches = browser, self.launches + 1
        self.browser_pid = next(p["id"] for p in processes if p["type"] == "browser")

    def pids(self) -> list[int]:
        """The running Chromium's processes (the browser first), empty when none runs."""
        return process_tree(self.browser_pid) if self.browser_pid else []

    def kill(self) -> None:
        """SIGKILL Chromium and wait (bounded) until it is gone, so the next episode sees it
        dead and launches another: every episode that was in it is replayed by its environment."""
        if self.browser_pid:
            pid = self.browser_pid
            kill_chromium([pid])
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)

    def _kill_tree(self) -> None:
        kill_chromium(self.pids())  # whatever a dead or closed browser left behind
        self.browser_pid = None

    def release(self) -> None:
        with self._pools_lock:
            self._users -= 1
            if self._users > 0:
                return
            self._pools.pop((self.executable_path, self.headless), None)
        pids = self.pids()
        with suppress(Exception):
            self.run(self._shutdown(), self.launch_timeout_s)
        kill_chromium(pids)
        self._stop_loop()

    async def _shutdown(self) -> None:
        if self._browser is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._browser.close(), CLOSE_TIMEOUT_S)
        with suppress(Exception):
            await self._playwright.stop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
