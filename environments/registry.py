"""Find environment adapters by name, including ones other packages register.

A plugin package declares, in its pyproject.toml:

    [project.entry-points."trajforge.environments"]
    mygame = "mypkg.env:MyGameEnvironment"
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from trajforge.environments.base import ConfigError, Environment

GROUP = "trajforge.environments"

# Built-ins, so the names resolve even when package metadata is missing (e.g. a bare checkout).
BUILTIN = {
    "toy": "trajforge.environments.toy:ToyEnvironment",
    "textworld": "trajforge.environments.textworld:TextWorldEnvironment",
    "miniwob": "trajforge.environments.miniwob:MiniWoBEnvironment",
    "webapp": "trajforge.environments.webapp.environment:WebAppEnvironment",
    "python": "trajforge.environments.code.environment:PythonEnvironment",
    "shop-api": "trajforge.environments.webapp.api:ShopApiEnvironment",
}


def available() -> dict[str, str]:
    """name -> "module:Class" for every adapter this installation knows."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.value
    return found


def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def environment_class(name: str) -> type:
    known = available()
    if name not in known:
        raise ConfigError(
            f"env: unknown environment {name!r}; choose one of {', '.join(sorted(known))} "
            f"or install a plugin that registers it under the entry-point group {GROUP!r}"
        )
    return _load(known[name])


def make(name: str, **options: Any) -> Environment:
    return environment_class(name)(**options)
