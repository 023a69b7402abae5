"""One message format for everything that becomes chat data: SFT export, pair prefixes,
LLM policy prompts. Observations are user turns, actions are assistant turns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SYSTEM_PROMPT = (
    "You are an agent acting in the environment '{env}'. Each user message is what you observe. "
    "Reply with one action the environment accepts, optionally preceded by a line "
    "'Thought: ...' with your reasoning."
)


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
        text = step["observation"]
        out.append({"role": "user", "content": first_user_text(instruction, text) if index == 0 else text})
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
