"""Outcome verifiers: decide whether a trajectory achieved its task."""

from __future__ import annotations

from typing import Any


def environment_verdict(trajectory: dict[str, Any]) -> dict[str, Any]:
    """The environment's own ground truth (its score or checker) as the verdict.

    A score in [0, 1]: 1.0 for a success, otherwise the reward earned, clipped; the verdict
    is 'unknown' when the environment could not tell.
    """
    success = trajectory.get("success")
    if success is None:
        verdict, score = "unknown", None
    elif success:
        verdict, score = "pass", 1.0
    else:
        verdict, score = "fail", min(max(float(trajectory.get("total_reward") or 0.0), 0.0), 1.0)
    return {**trajectory, "verifier_verdict": verdict, "verifier_score": score}
