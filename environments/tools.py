"""Tool actions in the environment protocol. An environment may declare `tools` (a list in OpenAI's
function-calling format); its actions are then calls (schemas.toolcalls.encode_call), and a call
is checked here against the declared JSON schema of its arguments before the environment runs it.
A call that fails the check is an invalid action: the agent sees the validation message as the
observation, nothing crashes and nothing changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from trajforge.environments.base import StepOutcome
from trajforge.schemas.ids import canonical_json
from trajforge.schemas.toolcalls import ToolCall, decode_call, tool_names


class InvalidCall(ValueError):
    """An action that is no valid call of a declared tool; its message is the agent's observation."""


def function(name: str, description: str, properties: dict[str, Any], required: Sequence[str] = ()) -> dict:
    """A tool in OpenAI's function-calling format; unknown arguments are refused."""
    parameters = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        parameters["required"] = list(required)
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    import json

    from jsonschema import Draft202012Validator

    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check_call(tools: Sequence[Mapping[str, Any]], action: str) -> ToolCall:
    """The call an action holds, if it is a valid call of one of `tools`; else InvalidCall."""
    from jsonschema.exceptions import best_match

    try:
        call = decode_call(action)
    except ValueError as exc:
        raise InvalidCall(str(exc)) from None
    declared = {t["function"]["name"]: t["function"] for t in tools}
    if call.name not in declared:
        raise InvalidCall(f"no tool named {call.name!r}; the tools are {', '.join(tool_names(tools))}")
    schema = declared[call.name].get("parameters") or {"type": "object"}
    error = best_match(_validator(canonical_json(schema)).iter_errors(call.arguments))
    if error is not None:
        where = ".".join(["arguments", *map(str, error.absolute_path)])
        raise InvalidCall(f"{call.name}: {where}: {error.message}")
    return call


def invalid_outcome(error: InvalidCall) -> StepOutcome:
    return StepOutcome(f"Invalid tool call: {error}", 0.0, False, None, {"invalid_action": str(error)})
