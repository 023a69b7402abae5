"""The model verifier (an outcome reward model): asks a judge model whether a trajectory
achieved its instruction. P(success) comes from the likelihoods of the answers "yes" and "no"
(no sampling), so the same trajectory always gets the same score."""

from __future__ import annotations

from typing import Any

from trajforge.inference.client import Backend
from trajforge.inference.scoring import score_candidates, softmax

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


class Judge:
    """Scores trajectories with a model; `threshold` turns P(yes) into a verdict."""

    def __init__(self, client: Backend, model: str | None, threshold: float = 0.5) -> None:
        self.client, self.model, self.threshold = client, model, threshold

    def verdict(self, trajectory: dict[str, Any]) -> dict[str, Any]:
        """The trajectory with the judge's verifier_score/verdict and the tokens it cost."""
        scores, usage = score_candidates(
            self.client, self.model, judge_messages(trajectory), "", ["yes", "no"]
        )
        p_yes = softmax(scores)[0]
        return {
            **trajectory,
            "verifier_score": round(p_yes, 9),
            "verifier_verdict": "pass" if p_yes >= self.threshold else "fail",
            "tokens_in": (trajectory.get("tokens_in") or 0) + usage.prompt_tokens,
            "tokens_out": (trajectory.get("tokens_out") or 0) + usage.completion_tokens,
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


def critique(judge: Judge, trajectory: dict[str, Any]) -> dict[str, Any] | None:
    """Which step first went wrong (as Agent-R revises from it), with the critic's confidence;
    None for an empty trajectory."""
    steps = list(trajectory["steps"])[:MAX_STEPS_SHOWN]
    if not steps:
        return None
    candidates = [str(s["index"]) for s in steps]
    scores, usage = score_candidates(judge.client, judge.model, critique_messages(trajectory), "", candidates)
    probs = softmax(scores)
    best = max(range(len(steps)), key=lambda i: (probs[i], -i))
    return {
        "first_error_step": int(candidates[best]),
        "action": steps[best]["action"],
        "confidence": round(probs[best], 6),
        "step_scores": {c: round(p, 6) for c, p in zip(candidates, probs, strict=True)},
        "tokens_in": usage.prompt_tokens,
        "tokens_out": usage.completion_tokens,
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
