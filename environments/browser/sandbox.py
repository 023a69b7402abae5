"""The sandbox: Chromium's flags, the context options and routing that let a page reach only
the allowed origins, and the listeners that count every attempt to leave."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from trajforge.environments.base import ConfigError

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
ERROR_PAGE = "chrome-error://"


def launch_args() -> list[str]:
    """Chromium's command-line flags."""
    return [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {_DEAD_PROXY_HOST} ~NOTFOUND"]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(origin: Any) -> str:
    """The origin, normalised; ConfigError when it is not scheme://host[:port]."""
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


def context_options(allowed: list[str]) -> dict[str, Any]:
    """new_context() options: no service workers, no downloads, the dead proxy but for `allowed`."""
    return {
        "service_workers": "block",
        "accept_downloads": False,
        "proxy": {"server": _DEAD_PROXY, "bypass": ",".join(_host_port(o) for o in allowed)},
    }


async def seal(context: Any, allowed: list[str], blocked: Callable[[], None]) -> None:
    """Route a context's requests: those outside `allowed` and every WebSocket are refused; each
    attempt, and each request the dead proxy stops, calls blocked()."""
    allowed_set = set(allowed)

    async def abort(route: Any) -> None:
        blocked()
        await route.abort("blockedbyclient")

    async def refuse_socket(ws: Any) -> None:
        blocked()
        await ws.close()

    def on_failed(request: Any) -> None:
        # Redirects escape routing; the dead proxy stops them (and anything else that slips).
        routed = "BLOCKED_BY_CLIENT" in (request.failure or "")
        if not routed and origin_of(request.url) not in allowed_set:
            blocked()

    # A regex is matched in the driver: allowed requests never wait for Python.
    await context.route(_outside(allowed), abort)
    await context.route_web_socket(re.compile(".*"), refuse_socket)
    context.on("requestfailed", on_failed)


def watch(context: Any, page: Any, blocked: Callable[[], None]) -> None:
    """Count the page's downloads and refused loads, and close (and count) every popup of its
    context. Call it after the context's own page is open, which fires "page" too."""

    async def close_popup(popup: Any) -> None:
        blocked()
        with suppress(Exception):
            await popup.close()

    page.on("download", lambda _: blocked())
    page.on("console", lambda msg: msg.text.startswith(_REFUSED_MESSAGES) and blocked())
    context.on("page", close_popup)
