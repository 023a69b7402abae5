"""A sandboxed Chromium behind the Environment protocol.

A process runs one Chromium (`BrowserPool`, Playwright's async API on a thread of its own);
each environment opens one fresh BrowserContext per episode in it, so environments in several
threads have their episodes in flight in one browser at once.
Observations are the page's accessibility tree (`aria_snapshot`) plus a list of the
interactive elements, each tagged in the DOM with `data-tf-ref="eN"`. Actions are strings:

    click e3 | type e3 "text" | select e3 "option" | press "Enter" | scroll down|up | go back

(quoted text is a JSON string). A malformed action or a stale ref is not a crash: the step
says so in its observation (reward 0, not done).

The sandbox: requests to anything but `allowed_origins` are aborted by context-level routing;
redirects (which routing does not see) and any other channel hit a per-context proxy that
cannot resolve, bypassed only for the allowed host:ports; WebSockets are refused; service
workers blocked; downloads refused; popups closed. Every attempt counts in `blocked_requests`.

Crashes: when Chromium or the page dies, the episode is replayed once (reset plus the
actions so far, so episodes must be deterministic) in a fresh context, in a fresh browser if
the browser died; a second death raises EnvironmentFailure. A step that hangs longer than
`step_timeout_s` loses its context and is replayed the same way. Killing Chromium kills every
episode in it; each is replayed by its own environment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trajforge.environments.base import ConfigError, EnvironmentFailure, Reset, StepOutcome, TaskSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebRTC may only go through the proxy (which is dead): no STUN/TURN over UDP, no host
    # candidates. Chromium 156 knows this switch; the older --force-webrtc-ip-handling-policy is gone.
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
]
# DNS prefetch (a lookup alone leaks data): Chromium 156 has no --dns-prefetch-disable any more;
# headless behind our proxy it resolves nothing a page names in <link rel=dns-prefetch> (the
# sandbox test reads Chromium's net log to keep it so).
# Everything not bypassed goes to this proxy, whose name never resolves: nothing leaves.
_DEAD_PROXY_HOST = "trajforge-blocked.invalid"
_DEAD_PROXY = f"http://{_DEAD_PROXY_HOST}:9"
# Console messages by which Chromium or Playwright report an attempt they refused.
_REFUSED_MESSAGES = (
    "Not allowed to load local resource",
    "Not allowed to navigate top frame to data URL",
    "Service Worker registration blocked",
)
_ERROR_PAGE = "chrome-error://"
_CLOSE_TIMEOUT_S = 5.0  # closing a context or browser that died may never answer
_PROBE_TIMEOUT_S = 5.0  # a Chromium that answers no CDP call in this time is hung

# Tags interactive elements with data-tf-ref (kept across observations) and describes them.
_ELEMENTS_JS = """
(rootSelector) => {
  const root = document.querySelector(rootSelector) || document.body;
  const ROLES = new Set(['button', 'link', 'tab', 'checkbox', 'radio', 'menuitem', 'menuitemcheckbox',
    'menuitemradio', 'option', 'treeitem', 'switch', 'combobox', 'textbox', 'searchbox', 'slider',
    'spinbutton']);
  const CONTROLS = new Set(['INPUT', 'SELECT', 'TEXTAREA', 'BUTTON']);
  const NON_TEXT = new Set(['checkbox', 'radio', 'button', 'submit', 'reset', 'image', 'file', 'range',
    'color', 'hidden']);
  const clean = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const pointer = (el) => !!el && getComputedStyle(el).cursor === 'pointer';
  const interactive = (el) => {
    if (el.tagName === 'INPUT') return el.type !== 'hidden';
    if (el.matches('a[href], button, select, textarea, summary, [onclick], [contenteditable=""], '
        + '[contenteditable="true"]')) return true;
    if (ROLES.has(el.getAttribute('role'))) return true;
    return pointer(el) && !pointer(el.parentElement);
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none';
  };
  const editable = (el) => el.tagName === 'TEXTAREA' || el.isContentEditable
    || (el.tagName === 'INPUT' && !NON_TEXT.has(el.type));
  const roleOf = (el) => {
    const role = el.getAttribute('role');
    if (ROLES.has(role)) return role;
    if (el.tagName === 'INPUT') {
      if (el.type === 'checkbox' || el.type === 'radio') return el.type;
      if (['button', 'submit', 'reset', 'image'].includes(el.type)) return 'button';
      return el.type === 'range' ? 'slider' : 'textbox';
    }
    return {A: 'link', BUTTON: 'button', SELECT: 'select', TEXTAREA: 'textbox', SUMMARY: 'button'}[el.tagName]
      || (el.isContentEditable ? 'textbox' : 'clickable');
  };
  const nameOf = (el) => {
    let name = el.getAttribute('aria-label');
    if (!name && el.labels && el.labels.length) name = Array.from(el.labels, (l) => l.innerText).join(' ');
    if (!name && el.tagName === 'INPUT' && ['button', 'submit', 'reset'].includes(el.type)) name = el.value;
    if (!name && !['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) name = el.innerText;
    name = clean(name || el.getAttribute('placeholder') || el.getAttribute('title')
      || el.getAttribute('alt'));
    return name.length > 80 ? name.slice(0, 77) + '...' : name;
  };
  const chosen = new Set();
  const insideChosen = (el) => {
    for (let p = el.parentElement; p && p !== root.parentElement; p = p.parentElement) {
      if (chosen.has(p)) return true;
    }
    return false;
  };
  const out = [];
  for (const el of root.querySelectorAll('*')) {
    if (!interactive(el) || el.disabled || !visible(el)) continue;
    // A link inside a tab is one target, not two; form controls always count.
    if (!CONTROLS.has(el.tagName) && insideChosen(el)) continue;
    chosen.add(el);
    if (!el.dataset.tfRef) {
      window.__tfNextRef = (window.__tfNextRef || 0) + 1;
      el.dataset.tfRef = 'e' + window.__tfNextRef;
    }
    const isEditable = editable(el);
    const isSelect = el.tagName === 'SELECT';
    const isToggle = el.type === 'checkbox' || el.type === 'radio';
    out.push({
      ref: el.dataset.tfRef,
      role: roleOf(el),
      name: nameOf(el),
      value: isEditable ? (el.isContentEditable ? clean(el.innerText) : el.value)
        : isSelect && el.selectedIndex >= 0 ? clean(el.options[el.selectedIndex].text) : null,
      checked: isToggle ? el.checked : null,
      options: isSelect ? Array.from(el.options, (o) => clean(o.text)) : [],
      focused: document.activeElement === el,
      editable: isEditable,
    });
  }
  return {title: document.title, elements: out};
}
"""


@dataclass(frozen=True)
class Element:
    """An interactive element of the latest observation."""

    ref: str
    role: str
    name: str
    value: str | None = None
    checked: bool | None = None
    options: tuple[str, ...] = ()
    focused: bool = False
    editable: bool = False

    def describe(self) -> str:
        parts = [f"[{self.ref}] {self.role}"]
        if self.name:
            parts.append(quote(self.name))
        if self.checked is not None:
            parts.append("checked" if self.checked else "unchecked")
        if self.value is not None:
            parts.append(f"value={quote(self.value)}")
        if self.options:
            parts.append("options: " + ", ".join(quote(o) for o in self.options))
        if self.focused:
            parts.append("(focused)")
        return " ".join(parts)


@dataclass(frozen=True)
class Action:
    verb: str  # click, type, select, press, scroll, back
    ref: str = ""
    text: str = ""


def quote(text: str) -> str:
    """Text as actions write it: a JSON string."""
    return json.dumps(text, ensure_ascii=False)


_ACTION = re.compile(r'^(click|type|select)\s+(e\d+)(?:\s+(".*"))?$|^press\s+(".*")$', re.DOTALL)


def parse_action(text: str) -> Action:
    """The Action that `text` writes; ValueError (saying what is expected) when malformed."""
    line = text.strip()
    if line in ("scroll down", "scroll up"):
        return Action("scroll", text=line.split()[1])
    if line == "go back":
        return Action("back")
    match = _ACTION.match(line)
    if not match:
        raise ValueError(
            f'unknown action {line!r}; use click eN, type eN "text", select eN "option", '
            'press "Key", scroll down|up or go back'
        )
    verb, ref, arg, key = match.groups()
    if key is not None:
        return Action("press", text=_unquote(key))
    if (verb == "click") != (arg is None):
        raise ValueError(f"{line!r}: " + ("click takes only a ref" if arg else f'{verb} needs eN "text"'))
    return Action(verb, ref, _unquote(arg) if arg else "")


def _unquote(arg: str) -> str:
    try:
        value = json.loads(arg)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{arg!r} is not a quoted string (write it as JSON, e.g. "a \\"b\\"")') from exc
    if not isinstance(value, str):
        raise ValueError(f"{arg!r} is not a quoted string")
    return value


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _check_origin(origin: Any) -> str:
    parts = urlsplit(origin if isinstance(origin, str) else "")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            f"allowed_origins: {origin!r} is not an origin; write scheme://host:port, "
            "e.g. 'http://127.0.0.1:8000'"
        )
    return origin_of(origin)


def _outside(origins: list[str]) -> re.Pattern[str]:
    """Matches every URL that does not start with one of the origins."""
    inside = "|".join(re.escape(o + "/") for o in origins) or "(?!)"
    return re.compile(f"^(?!(?:{inside}))", re.IGNORECASE)


def _host_port(origin: str) -> str:
    parts = urlsplit(origin)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _find_chromium(executable_path: str | None) -> str:
    path = executable_path or os.environ.get("TRAJFORGE_CHROMIUM") or shutil.which("chromium")
    path = path or shutil.which("chromium-browser") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"executable_path: no Chromium at {path!r}; install it (apt-get install -y chromium) "
            "or pass executable_path=/path/to/chromium"
        )
    return path


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name}: {value!r} must be a positive number of seconds, e.g. {name}=10")
    return float(value)


# ---- processes ------------------------------------------------------------------------------


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux; just [pid] elsewhere)."""
    if not Path("/proc").is_dir():
        return [pid]
    parents = _parent_pids()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _is_chromium(pid: int) -> bool:
    """By the program's name (argv[0]), not its arguments: a path may mention chromium."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return b"chrom" in program.rsplit(b"/", 1)[-1]


def _alive(pid: int | None) -> bool:
    """The process runs (a zombie does not); True where /proc cannot tell."""
    if pid is None or not Path("/proc").is_dir():
        return pid is not None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _is_chromium(pid):  # not a recycled pid
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---- the browser pool -----------------------------------------------------------------------


class _Died(Exception):
    """Chromium or the page is gone (or a step hung): the episode may be replayed."""


class _Hung(_Died):
    """No answer from the browser in time."""


def _death_reason(exc: _Died) -> str:
    """The failure's code when the replay died too: a hang is a timeout, else the browser died."""
    return "env_timeout" if isinstance(exc, _Hung) or isinstance(exc.__cause__, _Hung) else "browser_died"


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
        """Run a coroutine on the pool's loop and wait at most timeout_s for it (_Died if it hangs)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise _Hung(f"no answer within {timeout_s:g}s") from exc

    async def browser(self) -> Any:
        """The running Chromium, launched (again) if there is none or it died."""
        async with self._launching:
            if self._browser is None or not self._browser.is_connected() or not _alive(self.browser_pid):
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
            return not self.run(self._answers(), _PROBE_TIMEOUT_S) and _alive(self.browser_pid)
        except _Hung:
            return True
        except Exception:  # noqa: BLE001 - gone rather than hung: the next episode relaunches it
            return False

    async def _launch(self) -> None:
        from playwright.async_api import Error as PlaywrightError

        old, self._browser = self._browser, None
        if old is not None:  # closing a killed browser can wait forever: bounded, then killed
            with suppress(Exception):
                await asyncio.wait_for(old.close(), _CLOSE_TIMEOUT_S)
        self._kill_tree()
        try:
            browser = await self._playwright.chromium.launch(
                executable_path=self.executable_path,
                headless=self.headless,
                args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {_DEAD_PROXY_HOST} ~NOTFOUND"],
                timeout=self.launch_timeout_s * 1000,
            )
            cdp = await browser.new_browser_cdp_session()
            processes = (await cdp.send("SystemInfo.getProcessInfo"))["processInfo"]
            await cdp.detach()
        except PlaywrightError as exc:
            raise EnvironmentFailure(
                f"could not launch Chromium: {_first_line(exc)}", reason="browser_launch"
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
            _kill([pid])
            deadline = time.monotonic() + _CLOSE_TIMEOUT_S
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)

    def _kill_tree(self) -> None:
        _kill(self.pids())  # whatever a dead or closed browser left behind
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
        _kill(pids)
        self._stop_loop()

    async def _shutdown(self) -> None:
        if self._browser is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._browser.close(), _CLOSE_TIMEOUT_S)
        with suppress(Exception):
            await self._playwright.stop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


# ---- the environment ------------------------------------------------------------------------


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
        self.allowed_origins = [_check_origin(o) for o in allowed_origins or []]
        self.start_urls = list(start_urls or [])
        for url in self.start_urls:
            if origin_of(url) not in self.allowed_origins:
                raise ConfigError(f"start_urls: {url!r} is outside allowed_origins; add {origin_of(url)!r}")
        self.screenshots = bool(screenshots)
        self.action_timeout_s = _positive("action_timeout_s", action_timeout_s)
        self.navigation_timeout_s = _positive("navigation_timeout_s", navigation_timeout_s)
        self.step_timeout_s = _positive("step_timeout_s", step_timeout_s)
        self.headless = headless
        self.executable_path = _find_chromium(executable_path)
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
        except _Died as exc:
            return self._retry(lambda: self._run(self._start(task)), exc)

    def step(self, action: str) -> StepOutcome:
        if self._task is None:
            raise EnvironmentFailure(f"{self.name}: no episode is running; call reset(task) first")
        try:
            outcome = self._run(self._step(action))
        except _Died as exc:
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
        """Run one reset or step on the pool; a step that hangs past step_timeout_s is _Died."""
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
        except _Hung as exc:
            if self._pool.hung():  # the browser, not just this page: every episode in it is replayed
                log.warning("%s: Chromium does not answer; killing it", self.name)
                self._pool.kill()
            else:  # a hung context goes; the replay opens a fresh one
                with suppress(_Died):
                    self._pool.run(self._close_context(), _CLOSE_TIMEOUT_S)
            raise _Died(f"the step hung for more than step_timeout_s={self.step_timeout_s:g}") from exc

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

    def _retry(self, attempt: Callable[[], T], exc: _Died) -> T:
        what = self._task.env_task if self._task else "?"
        if self._recovered:
            raise EnvironmentFailure(
                f"{self.name}: the browser died again in {what!r}: {exc}", reason=_death_reason(exc)
            ) from exc
        self._recovered = True
        log.warning("%s: browser died in %r (%s); replaying the episode in a fresh one", self.name, what, exc)
        try:
            return attempt()
        except _Died as again:
            raise EnvironmentFailure(
                f"{self.name}: the browser died twice in {what!r}: {exc}; then: {again}",
                reason=_death_reason(again),
            ) from again

    # ---- the context of an episode ----

    async def _close_context(self) -> None:
        context, self._context, self._page = self._context, None, None
        if context is not None:
            with suppress(Exception):
                await asyncio.wait_for(context.close(), _CLOSE_TIMEOUT_S)

    async def _new_page(self, browser: Any) -> None:
        await self._close_context()
        allowed = self._allowed()
        self._context = context = await browser.new_context(
            service_workers="block",
            accept_downloads=False,
            viewport=self.viewport,
            proxy={"server": _DEAD_PROXY, "bypass": ",".join(_host_port(o) for o in allowed)},
        )
        context.set_default_timeout(self.action_timeout_s * 1000)
        context.set_default_navigation_timeout(self.navigation_timeout_s * 1000)
        allowed_set = set(allowed)

        async def abort(route: Any) -> None:
            self._blocked += 1
            await route.abort("blockedbyclient")

        async def refuse_socket(ws: Any) -> None:
            self._blocked += 1
            await ws.close()

        def on_failed(request: Any) -> None:
            # Redirects escape routing; the dead proxy stops them (and anything else that slips).
            routed = "BLOCKED_BY_CLIENT" in (request.failure or "")
            if not routed and origin_of(request.url) not in allowed_set:
                self._blocked += 1

        # A regex is matched in the driver: allowed requests never wait for Python.
        await context.route(_outside(allowed), abort)
        await context.route_web_socket(re.compile(".*"), refuse_socket)
        context.on("requestfailed", on_failed)
        self._page = page = await context.new_page()
        self._crashed = False
        page.on("crash", lambda _: setattr(self, "_crashed", True))
        page.on("download", lambda _: self._count())
        page.on("console", lambda msg: msg.text.startswith(_REFUSED_MESSAGES) and self._count())
        context.on("page", self._close_popup)  # after our own page, which fires it too

    async def _close_popup(self, page: Any) -> None:
        self._count()
        with suppress(Exception):
            await page.close()

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
        """Playwright errors become _Died (browser gone) or EnvironmentFailure (this item failed)."""
        from playwright.async_api import Error as PlaywrightError

        try:
            yield
        except PlaywrightError as exc:
            if self._dead():
                raise _Died(_first_line(exc)) from exc
            raise EnvironmentFailure(
                f"{self.name}: {what} failed: {_first_line(exc)}", reason="page_error"
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
        found = await page.evaluate(_ELEMENTS_JS, self.observe_root)
        self._elements = {
            e["ref"]: Element(**{**e, "options": tuple(e["options"])}) for e in found["elements"]
        }
        if page.url.startswith(_ERROR_PAGE):
            url, tree = "(this page could not be loaded; it may be outside the sandbox)", ""
        else:
            url, tree = self._display_url(page.url), await page.locator(self.observe_root).aria_snapshot()
        lines = [f"URL: {url}", f"Title: {found['title']}", "", tree, "", "Interactive elements:"]
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
            return await self._perform(action, element)
        except PlaywrightError as exc:
            if self._dead():
                raise
            return f"{action.verb} failed: {_first_line(exc)}"

    async def _perform(self, action: Action, element: Element | None) -> str | None:
        page = self._page
        if action.verb == "press":
            await page.keyboard.press(action.text)
        elif action.verb == "scroll":
            sign = -1 if action.text == "up" else 1
            await page.evaluate("(sign) => window.scrollBy(0, sign * window.innerHeight * 0.8)", sign)
        elif action.verb == "back":
            if await page.go_back(wait_until="load") is None:
                return "there is no previous page"
        else:
            assert element is not None
            target = page.locator(f'[data-tf-ref="{element.ref}"]')
            if await target.count() != 1:
                return f"element {element.ref} is no longer on the page"
            if action.verb == "click":
                await target.click()
            elif action.verb == "type":
                if not element.editable:
                    return f"{element.ref} is a {element.role}, not a text field"
                await target.fill(action.text)
            elif element.role != "select":
                return f"{element.ref} is a {element.role}, not a select"
            elif action.text not in element.options:
                return f"{element.ref} has no option {quote(action.text)}"
            else:
                await target.select_option(label=action.text)
        return None


class LocalSiteEnvironment(BrowserEnvironment):
    """A browser on a site the environment serves itself on 127.0.0.1: started at the first
    reset, stopped by close(), and the only origin its pages may reach. Subclasses give
    `_serve()` (an object with `origin` and `close()`) and the task hooks."""

    def __init__(self, **browser_options: Any) -> None:
        for fixed in ("allowed_origins", "start_urls"):
            if fixed in browser_options:
                raise ConfigError(f"{fixed}: {self.name} serves its own site and sets it; remove the option")
        super().__init__(**browser_options)
        self._site: Any = None

    def _serve(self) -> Any:
        raise NotImplementedError

    def reset(self, task: TaskSpec) -> Reset:
        if self._site is None:
            self._site = self._serve()
        return super().reset(task)

    def close(self) -> None:
        super().close()
        if self._site is not None:
            self._site.close()
            self._site = None

    def _allowed(self) -> list[str]:
        return [self._site.origin]

    def _display_url(self, url: str) -> str:
        # The port changes from run to run; the data should not.
        if self._site is not None and url.startswith(self._site.origin):
            return url[len(self._site.origin) :]
        return url


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
