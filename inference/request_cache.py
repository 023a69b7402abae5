"""The on-disk request cache: one JSON file per reproducible request (greedy or seeded), keyed by
what determines the answer, shared by processes through atomic renames."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from trajforge.inference.locked import Locked
from trajforge.inference.protocol import ChatRequest, CompletionRequest, Request, Response

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached Response layout changes


@dataclass(frozen=True)
class CacheEntry:
    response: Response
    cost_usd: float | None  # what the answer cost when it was paid (None: written before this was kept)


class RequestCache(Locked):
    """A directory of JSON files named by the sha256 of (model, its fingerprint, kind, input,
    parameters). Writes are atomic renames, so several processes may share one directory. A
    write that fails (disk full) is counted and logged, never raised: the answer was paid for."""

    def __init__(self, directory: str | Path, namespace: str = "") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.namespace = namespace  # e.g. a prompt-template version: changing it misses the cache
        self.hits = 0
        self.misses = 0
        self.write_errors = 0

    def key(self, model: str, request: Request, fingerprint: str = "") -> str:
        kind = "chat" if isinstance(request, ChatRequest) else "completion"
        data = request.messages if isinstance(request, ChatRequest) else request.prompt
        extra = {"continue_final": request.continue_final} if isinstance(request, ChatRequest) else {}
        if isinstance(request, CompletionRequest):
            extra = {"echo": request.echo}
        payload = {
            "format": CACHE_FORMAT,
            "namespace": self.namespace,
            "model": request.model or model,
            "kind": kind,
            "input": data,
            "params": {**request.params(), **extra},
        }
        if fingerprint:  # the weights (hf:, vllm:) or the user's model.revision (openai:)
            payload["fingerprint"] = fingerprint
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Response | None:
        entry = self.lookup(key)
        return None if entry is None else entry.response

    def lookup(self, key: str) -> CacheEntry | None:
        try:
            data = json.loads(self._path(key).read_text())
            cost = data.get("cost_usd")
            entry = CacheEntry(Response.from_dict(data), None if cost is None else float(cost))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entry = None  # absent or unreadable (a torn file from a killed run): ask again
        with self._lock:
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
        return entry

    def put(self, key: str, response: Response, cost_usd: float | None = None) -> None:
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({**replace(response, cached=False).to_dict(), "cost_usd": cost_usd}, fh)
            os.replace(tmp, path)
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
            log.warning("request cache: cannot write %s (%s); the answer is used, not cached", path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
