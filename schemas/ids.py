"""Content-addressed ids: the same content always gets the same id, on any machine."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that ids and fingerprints hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(kind: str, **parts: Any) -> str:
    """A 32-hex id of `kind` and its parts, e.g. content_id("task", env=..., spec=..., seed=...)."""
    digest = hashlib.sha256(canonical_json({"kind": kind, **parts}).encode()).hexdigest()
    return digest[:32]


def task_id(env: str, env_task: str, seed: int) -> str:
    return content_id("task", env=env, env_task=env_task, seed=seed)


def trajectory_id(task_id: str, policy: str, search: dict[str, Any], sample_index: int) -> str:
    return content_id("trajectory", task_id=task_id, policy=policy, search=search, sample=sample_index)
