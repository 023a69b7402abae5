"""A sandboxed Chromium behind the Environment protocol (Playwright's sync API).

Each environment owns one Chromium process and opens one fresh BrowserContext per episode.
Observations are the page's accessibility tree (`aria_snapshot`) plus a list of the
interactive elements, each tagged in the DOM with `data-tf-ref="eN"`. Actions are strings:

    click e3 | type e3 "text" | select e3 "option" | press "Enter" | scroll down|up | go back

(quoted text is a JSON string). A malformed action or a stale ref is not a crash: the step
says so in its observation (reward 0, not done).

The sandbox: requests to anything but `allowed_origins` are aborted by context-level routing;
redirects (which routing does not see) and any other channel hit a per-context proxy that
cannot resolve, bypassed only for the allowed host:ports; WebSockets are refused; service
workers blocked; downloads refused; popups closed. Every attempt counts in `blocked_requests`.

Crashes: when Chromium or the page dies, the episode is replayed once in a fresh browser
(reset plus the actions so far, so episodes must be deterministic); a second death raises
EnvironmentFailure. A step that hangs longer than `step_timeout_s` kills Chromium, which
turns the hang into such a crash.

The sync API allows one Playwright driver per thread: environments in the same thread share
it (each still with its own Chromium), and an environment must be used from one thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
]
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
    try:
        return b"chrom" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _is_chromium(pid):  # not a recycled pid
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---- the Playwright driver ------------------------------------------------------------------


class _Driver:
    """The per-thread Playwright driver, shared by the environments of that thread."""

    _local = threading.local()

    @classmethod
    def acquire(cls) -> Any:
        if getattr(cls._local, "users", 0) == 0:
            try:
                from playwright.sync_api import sync_playwright
            except ImportError as exc:
                raise ConfigError(
                    "env: the browser environments need Playwright; pip install 'trajforge[web]'"
                ) from exc
            cls._local.playwright = sync_playwright().start()
            cls._local.users = 0
        cls._local.users += 1
        return cls._local.playwright

    @classmethod
    def release(cls) -> None:
        if getattr(cls._local, "users", 0) == 0:
            return  # another thread's driver: it cannot be touched from here
        cls._local.users -= 1
        if cls._local.users == 0:
            with suppress(Exception):
                cls._local.playwright.stop()
            cls._local.playwright = None


class _Died(Exception):
    """Chromium or the page is gone: the episode may be replayed in a fresh browser."""


# ---- the environment ------------------------------------------------------------------------


class BrowserEnvironment:
    """A sandboxed browser on `start_urls` (one task per URL; the instruction comes with the task).

    Subclasses adapt it to a web app by overriding `_allowed`, `_begin`, `_judge`,
    `_type_values` and `_display_url`.
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
        self._driver: Any = None
        self._browser: Any = None
        self._browser_pid: int | None = None
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

    def _begin(self, page: Any, task: TaskSpec) -> str:
        """Open the task's page and return its instruction."""
        page.goto(task.env_task, wait_until="load")
        return task.instruction

    def _judge(self, page: Any) -> tuple[float, bool, bool | None, dict[str, Any]]:
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
            return self._start(task)
        except _Died as exc:
            return self._retry(lambda: self._start(task), exc)

    def step(self, action: str) -> StepOutcome:
        if self._task is None:
            raise EnvironmentFailure(f"{self.name}: no episode is running; call reset(task) first")
        try:
            outcome = self._step(action)
        except _Died as exc:
            outcome = self._retry(lambda: self._replay(action), exc)
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
        self._shutdown_browser()
        self._task = None

    # ---- what callers may inspect ----

    @property
    def blocked_requests(self) -> int:
        """Attempts to leave the sandbox in the current episode."""
        return self._blocked

    @property
    def elements(self) -> list[Element]:
        """The interactive elements of the latest observation."""
        return list(self._elements.values())

    @property
    def page(self) -> Any:
        """The current Playwright page (for adapters and tests)."""
        return self._page

    def chromium_pids(self) -> list[int]:
        """The running Chromium's processes (the browser first), empty when none runs."""
        return process_tree(self._browser_pid) if self._browser_pid else []

    def kill_browser(self) -> None:
        """SIGKILL Chromium (the step watchdog's remedy for a hang; tests use it to crash)."""
        if self._browser_pid:
            _kill([self._browser_pid])

    # ---- episodes ----

    def _start(self, task: TaskSpec) -> Reset:
        if self._dead_browser():
            self._shutdown_browser()
            self._launch()
        self._done, self._success, self._blocked, self._elements = False, None, 0, {}
        with self._watchdog(), self._guard(f"reset of {task.env_task!r}"):
            self._new_page()
            instruction = self._begin(self._page, task)
            observation, info = self._settled(self._observe)
        return Reset(observation, instruction, info)

    def _step(self, action: str) -> StepOutcome:
        if self._done:
            return StepOutcome("The episode is over.", 0.0, True, self._success, self._info())
        with self._watchdog(), self._guard(f"step {action!r}"):
            error = self._act(action)
            reward, done, success, extra = self._settled(lambda: self._judge(self._page))
            self._done, self._success = done, success
            observation, info = self._settled(self._observe)
        if error:
            observation = f"Invalid action: {error}\n\n{observation}"
        info.update(extra, valid_action=error is None)
        if error:
            info["error"] = error
        return StepOutcome(observation, reward, done, success, info)

    def _replay(self, action: str) -> StepOutcome:
        assert self._task is not None
        self._start(self._task)
        for previous in self._actions:
            self._step(previous)
        return self._step(action)

    def _retry(self, attempt: Callable[[], T], exc: _Died) -> T:
        what = self._task.env_task if self._task else "?"
        if self._recovered:
            raise EnvironmentFailure(f"{self.name}: the browser died again in {what!r}: {exc}") from exc
        self._recovered = True
        log.warning(
            "%s: browser died in %r (%s); retrying the episode in a fresh browser", self.name, what, exc
        )
        self._shutdown_browser()
        try:
            return attempt()
        except _Died as again:
            raise EnvironmentFailure(
                f"{self.name}: the browser died twice in {what!r}: {exc}; then: {again}"
            ) from again

    # ---- the browser ----

    def _launch(self) -> None:
        from playwright.sync_api import Error as PlaywrightError

        try:
            self._driver = _Driver.acquire()
            self._browser = self._driver.chromium.launch(
                executable_path=self.executable_path,
                headless=self.headless,
                args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {_DEAD_PROXY_HOST} ~NOTFOUND"],
                timeout=self.navigation_timeout_s * 1000,
            )
            cdp = self._browser.new_browser_cdp_session()
            processes = cdp.send("SystemInfo.getProcessInfo")["processInfo"]
            cdp.detach()
        except PlaywrightError as exc:  # also the sync API refusing a thread that runs an asyncio loop
            self._shutdown_browser()
            raise EnvironmentFailure(f"{self.name}: could not launch Chromium: {_first_line(exc)}") from exc
        self._browser_pid = next(p["id"] for p in processes if p["type"] == "browser")
        self._crashed = False

    def _new_page(self) -> None:
        if self._context is not None:
            with suppress(Exception):
                self._context.close()
        allowed = self._allowed()
        self._context = context = self._browser.new_context(
            service_workers="block",
            accept_downloads=False,
            viewport=self.viewport,
            proxy={"server": _DEAD_PROXY, "bypass": ",".join(_host_port(o) for o in allowed)},
        )
        context.set_default_timeout(self.action_timeout_s * 1000)
        context.set_default_navigation_timeout(self.navigation_timeout_s * 1000)
        allowed_set = set(allowed)

        def abort(route: Any) -> None:
            self._blocked += 1
            route.abort("blockedbyclient")

        def refuse_socket(ws: Any) -> None:
            self._blocked += 1
            ws.close()

        def on_failed(request: Any) -> None:
            # Redirects escape routing; the dead proxy stops them (and anything else that slips).
            routed = "BLOCKED_BY_CLIENT" in (request.failure or "")
            if not routed and origin_of(request.url) not in allowed_set:
                self._blocked += 1

        # A regex is matched in the driver: allowed requests never wait for Python.
        context.route(_outside(allowed), abort)
        context.route_web_socket(re.compile(".*"), refuse_socket)
        context.on("requestfailed", on_failed)
        self._page = page = context.new_page()
        self._crashed = False
        page.on("crash", lambda _: setattr(self, "_crashed", True))
        page.on("download", lambda _: self._count())
        page.on("console", lambda msg: msg.text.startswith(_REFUSED_MESSAGES) and self._count())
        context.on("page", self._close_popup)  # after our own page, which fires it too

    def _close_popup(self, page: Any) -> None:
        self._count()
        with suppress(Exception):
            page.close()

    def _count(self) -> None:
        self._blocked += 1

    def _dead_browser(self) -> bool:
        return self._browser is None or not self._browser.is_connected()

    def _dead(self) -> bool:
        return self._dead_browser() or self._crashed or self._page is None or self._page.is_closed()

    def _shutdown_browser(self) -> None:
        pids = self.chromium_pids()
        for closable in (self._context, self._browser):
            if closable is not None:
                with suppress(Exception):
                    closable.close()
        if self._driver is not None:
            _Driver.release()
        _kill(pids)  # whatever close() left behind
        self._driver = self._browser = self._context = self._page = None
        self._browser_pid, self._elements = None, {}

    @contextmanager
    def _watchdog(self) -> Iterator[None]:
        timer = threading.Timer(self.step_timeout_s, self.kill_browser)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Playwright errors become _Died (browser gone) or EnvironmentFailure (this item failed)."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            yield
        except PlaywrightError as exc:
            if self._dead():
                raise _Died(_first_line(exc)) from exc
            raise EnvironmentFailure(f"{self.name}: {what} failed: {_first_line(exc)}") from exc

    # ---- observing and acting ----

    def _settled(self, read: Callable[[], T]) -> T:
        """read() once the page has loaded, again if a navigation replaced the page meanwhile."""
        from playwright.sync_api import Error as PlaywrightError

        for attempt in range(3):
            self._page.wait_for_load_state("load")
            try:
                return read()
            except PlaywrightError as exc:
                if attempt == 2 or self._dead() or "context was destroyed" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def _observe(self) -> tuple[str, dict[str, Any]]:
        page = self._page
        found = page.evaluate(_ELEMENTS_JS, self.observe_root)
        self._elements = {
            e["ref"]: Element(**{**e, "options": tuple(e["options"])}) for e in found["elements"]
        }
        if page.url.startswith(_ERROR_PAGE):
            url, tree = "(this page could not be loaded; it may be outside the sandbox)", ""
        else:
            url, tree = self._display_url(page.url), page.locator(self.observe_root).aria_snapshot()
        lines = [f"URL: {url}", f"Title: {found['title']}", "", tree, "", "Interactive elements:"]
        lines += [el.describe() for el in self._elements.values()] or ["(none)"]
        info: dict[str, Any] = self._info()
        if self.screenshots:
            info["screenshot"] = page.screenshot(type="png")
        return "\n".join(lines), info

    def _info(self) -> dict[str, Any]:
        url = self._page.url if self._page is not None and not self._page.is_closed() else ""
        return {"blocked_requests": self._blocked, "url": self._display_url(url)}

    def _act(self, text: str) -> str | None:
        """Perform an action; what was wrong with it, or None."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            action = parse_action(text)
        except ValueError as exc:
            return str(exc)
        element = self._elements.get(action.ref) if action.ref else None
        if action.ref and element is None:
            return f"no element {action.ref} on this page; use a ref from the latest observation"
        try:
            return self._perform(action, element)
        except PlaywrightError as exc:
            if self._dead():
                raise
            return f"{action.verb} failed: {_first_line(exc)}"

    def _perform(self, action: Action, element: Element | None) -> str | None:
        page = self._page
        if action.verb == "press":
            page.keyboard.press(action.text)
        elif action.verb == "scroll":
            sign = -1 if action.text == "up" else 1
            page.evaluate("(sign) => window.scrollBy(0, sign * window.innerHeight * 0.8)", sign)
        elif action.verb == "back":
            if page.go_back(wait_until="load") is None:
                return "there is no previous page"
        else:
            assert element is not None
            target = page.locator(f'[data-tf-ref="{element.ref}"]')
            if target.count() != 1:
                return f"element {element.ref} is no longer on the page"
            if action.verb == "click":
                target.click()
            elif action.verb == "type":
                if not element.editable:
                    return f"{element.ref} is a {element.role}, not a text field"
                target.fill(action.text)
            elif element.role != "select":
                return f"{element.ref} is a {element.role}, not a select"
            elif action.text not in element.options:
                return f"{element.ref} has no option {quote(action.text)}"
            else:
                target.select_option(label=action.text)
        return None


class LocalSiteEnvironment(BrowserEnvironment):
    """A browser on a site the environment serves itself on 127.0.0.1: started at the first
    reset, stopped by close(), and the only origin its pages may reach. Subclasses give
    `_serve()` (an object with `origin` and `close()`) and the task hooks."""

    def __init__(self, **browser_options: Any) -> None:
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
