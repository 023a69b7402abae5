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

Modules: dom (the element-tagging script, Element), actions (the grammar and doing an action),
sandbox (flags, origins, routing, counting), procs (Chromium's processes in /proc), pool
(BrowserPool), environment (BrowserEnvironment), site (LocalSiteEnvironment).
"""

from trajforge.environments.browser.actions import Action, parse_action, quote
from trajforge.environments.browser.dom import Element
from trajforge.environments.browser.environment import BrowserEnvironment, positive_seconds
from trajforge.environments.browser.pool import BrowserPool
from trajforge.environments.browser.procs import process_tree
from trajforge.environments.browser.sandbox import CHROMIUM_ARGS, origin_of
from trajforge.environments.browser.site import LocalSiteEnvironment

__all__ = [
    "CHROMIUM_ARGS",
    "Action",
    "BrowserEnvironment",
    "BrowserPool",
    "Element",
    "LocalSiteEnvironment",
    "origin_of",
    "parse_action",
    "positive_seconds",
    "process_tree",
    "quote",
]
