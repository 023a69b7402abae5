"""The sandbox's pieces: which origins a page may reach, and the dead proxy for everything else."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from trajforge.environments.base import ConfigError

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
