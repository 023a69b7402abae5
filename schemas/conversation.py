"""One message format for everything that becomes chat data: SFT export, pair prefixes,
LLM policy prompts. Observations are user turns, actions are assistant turns.

A step's user turn is rendered by `user_text` alone, for the LLM policy and the export alike: a
model trained on exported conversations sees the prompts it is given when it acts. Where the step
kept its admissible actions (Step.admissible), the turn ends with them and the answer format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SYSTEM_PROMPT = (
    "You are an agent acting in the environment '{env}'. Each user message is what you observe. "
    "Reply with one action the environment accepts, optionally preceded by a line "
    "'Thought: ...' with your reasoning."
)


ACTIONS_PROMPT = (
    "Admissible actions:\n{actions}\n\n"
    "Answer in two lines:\nThought: <your reasoning>\nAction: <exactly one admissible action>"
)


def actions_block(admissible: Sequence[str]) -> str:
    """The end of a user turn: the admissible actions and how to answer."""
    return "\n\n" + ACTIONS_PROMPT.format(actions="\n".join(f"- {a}" for a in admissible))


def user_text(instruction: str, observation: str, index: int, admissible: Sequence[str] | None = None) -> str:
    """The user turn of step `index`: the task with the first observation, later observations
    alone; then the admissible actions block when the step has them."""
    text = first_user_text(instruction, observation) if index == 0 else observation
    return text + actions_block(admissible) if admissible else text


def assistant_text(action: str, thought: str | None) -> str:
    return f"Thought: {thought}\nAction: {action}" if thought else action


def first_user_text(instruction: str, observation: str) -> str:
    return f"Task: {instruction}\n\n{observation}"


def messages(
    env: str, instruction: str, steps: Iterable[Mapping[str, Any]], upto: int | None = None
) -> list[dict[str, str]]:
    """The conversation of a trajectory: system, then (observation, action) turns.

    Each step holds the observation the agent saw before acting and the action it took.
    With `upto`, stop before step `upto`'s action: the prefix a policy sees at that step.
    """
    out = [{"role": "system", "content": SYSTEM_PROMPT.format(env=env)}]
    for step in steps:
        index = int(step["index"])
        text = user_text(instruction, step["observation"], index, step.get("admissible"))
        out.append({"role": "user", "content": text})
        if upto is not None and index >= upto:
            break
        out.append({"role": "assistant", "content": assistant_text(step["action"], step.get("thought"))})
    return out


def parse_assistant_text(text: str) -> tuple[str, str | None]:
    """(action, thought) of an assistant turn written by `assistant_text`: its inverse."""
    if text.startswith("Thought: ") and "\nAction: " in text:
        thought, _, action = text[len("Thought: ") :].rpartition("\nAction: ")
        return action, thought
    return text, None
