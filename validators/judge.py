"""The model verifier (an outcome reward model): asks a judge model whether a trajectory
achieved its instruction. P(success) comes from the likelihoods of the answers "yes" and "no"
(no sampling), so the same trajectory always gets the same score. The critique names the first
wrong step of a failure the same way.

Plain functions of one trajectory: a question to score (`judge_question`, `critique_question`)
and what its scores make of the trajectory (`with_verdict`, `with_critique`); the pipeline
scores the questions in bulk (`inference.scoring.Scored` is a result)."""

from __future__ import annotations

import json
from typing import Any

from trajforge.inference.scoring import Question, Scored, softmax
from trajforge.schemas import ids
from trajforge.schemas.records import Failure

SYSTEM = (
    "You are a strict judge of AI agents. Read the task and the agent's transcript, then answer "
    "with one word, yes or no: did the agent achieve the task?"
)
MAX_STEPS_SHOWN = 30  # bounds the prompt; the end of an episode decides its outcome


def judge_messages(trajectory: dict[str, Any]) -> list[dict[str, str]]:
    steps = list(trajectory["steps"])[-MAX_STEPS_SHOWN:]
    lines = [f"Step {s['index']}: saw {s['observation'][:400]!r}, did {s['action']!r}" for s in steps]
    final = (trajectory.get("final_observation") or "")[:800]
    transcript = "\n".join(lines) or "(no steps)"
    user = (
        f"Task: {trajectory['instruction']}\n\nTranscript:\n{transcript}\n\nFinal observation: {final!r}\n\n"
        "Did the agent achieve the task? Answer yes or no."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def judge_question(trajectory: dict[str, Any]) -> Question:
    """Did the trajectory achieve its task? Scored by the likelihoods of "yes" and "no"."""
    return judge_messages(trajectory), "", ["yes", "no"]


def with_verdict(trajectory: dict[str, Any], scored: Scored, threshold: float = 0.5) -> dict[str, Any]:
    """The trajectory with the judge's verifier_score/verdict and the tokens it cost; a failed
    judgement keeps the environment's verdict (and is a `failed_judgement`)."""
    if "error" in scored:
        return trajectory
    p_yes = softmax(scored["scores"])[0]
    verdict = {
        "verifier_score": round(p_yes, 9),
        "verifier_verdict": "pass" if p_yes >= threshold else "fail",
    }
    return _charged({**trajectory, **verdict}, scored)


def needs_critique(trajectory: dict[str, Any]) -> bool:
    """Failed (by the environment's truth, else by the judge) and not yet critiqued."""
    return _failed_attempt(trajectory) and trajectory.get("critique") is None


def with_critique(trajectory: dict[str, Any], scored: Scored) -> dict[str, Any]:
    """The failed trajectory with the first step that went wrong (as Agent-R revises from it)
    in `critique`, as JSON with the critic's confidence and per-step scores; unchanged when the
    critique failed (a `failed_judgement`)."""
    if "error" in scored:
        return trajectory
    return _charged(
        {**trajectory, "critique": json.dumps(_first_error(trajectory, scored["scores"]))}, scored
    )


def failed_judgement(trajectory: dict[str, Any], scored: Scored, stage: str) -> Failure | None:
    """The failure row of a judgement (`stage`: judge or critique) whose requests failed, with
    the error's reason code (http_503, timeout, context_overflow, ...); None if it was scored."""
    if "error" not in scored:
        return None
    return Failure(
        item_id=ids.judgement_failure_id(trajectory["trajectory_id"], stage),
        task_id=trajectory["task_id"],
        stage=stage,
        reason=scored.get("reason") or "internal_error",
        detail=scored["error"],
        run_id=trajectory.get("run_id"),
    )


def _failed_attempt(trajectory: dict[str, Any]) -> bool:
    """Failed by the environment's truth, or by the judge's verdict where there is no truth."""
    truth = trajectory.get("success")
    failed = not truth if truth is not None else trajectory.get("verifier_verdict") == "fail"
    return failed and bool(trajectory["steps"])


def _charged(trajectory: dict[str, Any], scored: Scored) -> dict[str, Any]:
    return {
        **trajectory,
        "tokens_in": (trajectory.get("tokens_in") or 0) + scored["tokens_in"],
        "tokens_out": (trajectory.get("tokens_out") or 0) + scored["tokens_out"],
    }


CRITIC_SYSTEM = (
    "You review a failed attempt of an AI agent. Read the task and the numbered steps, then answer "
    "with the number of the first step that went wrong."
)


def critique_messages(trajectory: dict[str, Any]) -> list[dict[str, str]]:
    steps = list(trajectory["steps"])[:MAX_STEPS_SHOWN]
    lines = "\n".join(f"{s['index']}. saw {s['observation'][:300]!r}, did {s['action']!r}" for s in steps)
    user = (
        f"Task: {trajectory['instruction']}\n\nSteps:\n{lines}\n\nThe first step that went wrong is number:"
    )
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": user}]


def critique_question(trajectory: dict[str, Any]) -> Question:
    steps = list(trajectory["steps"])[:MAX_STEPS_SHOWN]
    return critique_messages(trajectory), "", [str(s["index"]) for s in steps]


def _first_error(trajectory: dict[str, Any], scores: list[float]) -> dict[str, Any]:
    steps = list(trajectory["steps"])[:MAX_STEPS_SHOWN]
    probs = softmax(scores)
    best = max(range(len(steps)), key=lambda i: (probs[i], -i))
    return {
        "first_error_step": int(steps[best]["index"]),
        "action": steps[best]["action"],
        "confidence": round(probs[best], 6),
        "step_scores": {str(s["index"]): round(p, 6) for s, p in zip(steps, probs, strict=True)},
    }


def agreement(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Confusion counts of the judge against the environment's truth, where it knows it."""
    out = {"judge:tp": 0, "judge:fp": 0, "judge:fn": 0, "judge:tn": 0}
    for r in rows:
        if r.get("success") is None or r.get("verifier_verdict") not in ("pass", "fail"):
            continue
        said, truth = r["verifier_verdict"] == "pass", bool(r["success"])
        out["judge:" + ("tp" if said and truth else "fp" if said else "fn" if truth else "tn")] += 1
    return out
