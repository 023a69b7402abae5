"""Tool calls as actions. An environment that declares tools (OpenAI's function-calling format:
`{"type": "function", "function": {"name", "description", "parameters": JSON schema}}`) takes
actions that are calls, written as one canonical JSON string `{"arguments": {...}, "name": ...}`:
the same call is always the same action (search trees merge them, ids hash them). Steps keep the
call's name, its arguments as a JSON string and its result beside the action (records.Step)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trajforge.schemas.ids import canonical_json


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return canonical_json(self.arguments)


def encode_call(name: str, arguments: Mapping[str, Any] | None = None) -> str:
    """The action string of a call."""
    return canonical_json({"name": name, "arguments": dict(arguments or {})})


def decode_call(action: str) -> ToolCall:
    """The call an action string holds; ValueError (its message fit for the agent) if none.
    `arguments` may also come as a JSON string, as OpenAI's API sends them."""
    try:
        value = json.loads(action)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the action is not a JSON tool call ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError('a tool call is a JSON object {"name": "...", "arguments": {...}}')
    extra = set(value) - {"name", "arguments"}
    if extra:
        raise ValueError(f"a tool call has only name and arguments, not {', '.join(sorted(extra))}")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments: not valid JSON ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise ValueError("arguments: must be a JSON object of the tool's parameters")
    return ToolCall(value["name"], arguments)


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def step_fields(action: str, result: str) -> dict[str, str | None]:
    """The tool columns of a step whose action is a call (None where it is not one)."""
    try:
        call = decode_call(action)
    except ValueError:
        return {"tool_name": None, "tool_arguments": None, "tool_result": None}
    return {"tool_name": call.name, "tool_arguments": call.arguments_json, "tool_result": result}
