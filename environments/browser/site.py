"""A browser on a site the environment serves itself on loopback."""

from __future__ import annotations

from typing import Any

from trajforge.environments.base import ConfigError, Reset, TaskSpec
from trajforge.environments.browser.environment import BrowserEnvironment


class LocalSiteEnvironment(BrowserEnvironment):
    """A browser on a site the environment serves itself on 127.0.0.1: started at the first
    reset, stopped by close(), and the only origin its pages may reach. Subclasses give
    `_serve()` (an object with `origin` and `close()`, e.g. a LoopbackServer) and the task hooks."""

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
