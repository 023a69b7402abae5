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


def tree_trajectory_id(task_id: str, policy: str, search: dict[str, Any], path: list[str]) -> str:
    """A trajectory found in a search tree: named by its actions, not by a sample index."""
    return content_id("trajectory", task_id=task_id, policy=policy, search=search, path=list(path))


def node_id(task_id: str, policy: str, search: dict[str, Any], path: list[str]) -> str:
    return content_id("node", task=task_id, policy=policy, key=search, path=list(path))


def pair_id(
    task_id: str,
    step_index: int,
    prefix: str,
    chosen: str,
    rejected: str,
    source: str,
    origin: dict[str, Any] | None = None,
) -> str:
    """`origin` (the policy and search key of the tree a sibling pair comes from) joins the id
    when given: two trees may offer the same preference with other Q values."""
    return content_id(
        "pair",
        task_id=task_id,
        step=step_index,
        prefix=prefix,
        chosen=chosen,
        rejected=rejected,
        source=source,
        **({"origin": origin} if origin else {}),
    )


def search_failure_id(task_id: str, policy: str, search: dict[str, Any]) -> str:
    return content_id("failure", task=task_id, policy=policy, key=search)


def judgement_failure_id(trajectory_id: str, stage: str) -> str:
    """A failed judgement (`stage` judge or critique) of one trajectory."""
    return content_id("failure", stage=stage, trajectory=trajectory_id)


def artifact_id(trajectory_id: str, step_index: int, kind: str) -> str:
    return content_id("artifact", trajectory=trajectory_id, step=step_index, artifact_kind=kind)


def search_seed(task_id: str, policy: str, search: dict[str, Any]) -> int:
    """The seed of a (task, policy) search: the same wherever and whenever it runs."""
    return int(content_id("search", task=task_id, policy=policy, key=search)[:8], 16)


def count_id(stage: str, task_id: str, unit: dict[str, Any], reason: str) -> str:
    """What one unit of work of a stage dropped for one reason (staged, never committed)."""
    return content_id("count", stage=stage, task=task_id, unit=unit, reason=reason)


def candidate_id(task_id: str, generator: str, instruction: str, parent_task_id: str | None) -> str:
    """A synthesized candidate: the same task proposed by another generator or wording is another
    candidate (each one's fate is recorded), the same one proposed again is not."""
    return content_id(
        "candidate", task=task_id, generator=generator, instruction=instruction, parent=parent_task_id
    )
