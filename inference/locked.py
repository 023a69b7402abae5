"""A base for objects that several threads share and Beam pickles to its workers."""

from __future__ import annotations

import threading
from typing import Any


class Locked:
    """Holds `_lock`, a lock made again after unpickling (Beam ships objects to workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
