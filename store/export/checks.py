"""Each written row checked against the rules of the trainer that reads it. A check returns the
reason a row would fail (or be skipped silently), None when it passes; the exporter drops such a
row and counts it, so the card's counts are the rows a trainer really gets.

- trl: the key sets of TRL 1.16's `apply_chat_template`, roles, the prompt's last role, and
  dict arguments; the PRM shape (no library checks it since TRL dropped its PRM trainer).
- sharegpt: LLaMA-Factory's sharegpt converter (data/converter.py) skips, with only a warning, a
  row whose turns break the user/assistant alternation or whose count is wrong; reimplemented.
- openai: OpenAI's published chat-format check (the cookbook's "data_type", "missing_messages_list",
  "message_missing_key", "message_unrecognized_key", "unrecognized_role", "missing_content",
  "example_missing_assistant_message") predates tools; this one covers tools, `tool_calls`
  (arguments a JSON string of an object) and `tool_call_id` pairing, and the DPO lines.
"""

from __future__ import annotations

import json
import math
from typing import Any

TRL_KEY_SETS = [
    {"messages"},
    {"prompt"},
    {"prompt", "completion"},
    {"prompt", "chosen", "rejected"},
    {"chosen", "rejected"},
    {"prompt", "completion", "label"},
]
_TRL_KEYS = {"prompt", "chosen", "rejected", "completion", "messages", "label"}
_ROLES = {"system", "user", "assistant", "tool"}


def check(style: str, fmt: str, row: dict[str, Any]) -> str | None:
    if style == "trl":
        return check_prm(row) if fmt == "prm" else check_trl(row)
    if style == "sharegpt":
        return check_sharegpt(row, ranking=fmt == "dpo", kto=fmt == "kto")
    return check_openai_dpo(row) if fmt == "dpo" else check_openai_chat(row)


def check_trl(row: dict[str, Any]) -> str | None:
    keys = {k for k in row if k in _TRL_KEYS}
    if keys not in TRL_KEY_SETS:
        return f"trl_keys:{sorted(keys)}"
    for key in keys - {"label"}:
        msgs = row[key]
        if not isinstance(msgs, list) or not msgs:
            return f"trl_empty:{key}"
        for m in msgs:
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                return f"trl_message:{key}"
            for call in m.get("tool_calls") or []:
                if not isinstance(call.get("function", {}).get("arguments"), dict):
                    return "trl_arguments_not_a_dict"
    if "prompt" in keys and row["prompt"][-1]["role"] not in ("user", "tool"):
        return "trl_prompt_ends_on_" + row["prompt"][-1]["role"]
    for key in keys & {"chosen", "rejected", "completion"}:
        if row[key][0]["role"] != "assistant":
            return f"trl_{key}_starts_on_{row[key][0]['role']}"
    if "label" in keys and not isinstance(row["label"], bool):
        return "trl_label_not_bool"
    return None


def check_prm(row: dict[str, Any]) -> str | None:
    """The stepwise shape: a prompt, one completion per step, one bool label and value per step."""
    completions, labels, values = row.get("completions"), row.get("labels"), row.get("values")
    if not isinstance(row.get("prompt"), str) or not row["prompt"]:
        return "prm_prompt"
    if (
        not isinstance(completions, list)
        or not completions
        or not all(isinstance(c, str) and c for c in completions)
    ):
        return "prm_completions"
    if (
        not isinstance(labels, list)
        or len(labels) != len(completions)
        or not all(isinstance(x, bool) for x in labels)
    ):
        return "prm_labels"
    if not isinstance(values, list) or len(values) != len(completions):
        return "prm_values"
    if not all(isinstance(v, float) and math.isfinite(v) for v in values):
        return "prm_values_not_finite"
    return None


def sharegpt_align(
    row: dict[str, Any], ranking: bool = False, kto: bool = False
) -> tuple[list[dict[str, str]], list[dict[str, str]]] | str:
    """LLaMA-Factory's sharegpt converter: (prompt, response) as it would train on them, or the
    reason it would skip the row (it only logs a warning and trains on nothing)."""
    odd, even = ("human", "observation"), ("gpt", "function_call")
    role = {"human": "user", "gpt": "assistant", "observation": "observation", "function_call": "function"}
    messages = row["conversations"]
    if messages and messages[0]["from"] == "system":
        messages = messages[1:]
    aligned = []
    for i, m in enumerate(messages):
        if m["from"] not in (odd, even)[i % 2]:
            return "sharegpt_alternation"
        if m["from"] == "function_call":
            try:
                call = json.loads(m["value"])
            except ValueError:
                return "sharegpt_function_call_not_json"
            if not isinstance(call, dict) or not isinstance(call.get("arguments"), dict):
                return "sharegpt_arguments_not_a_dict"
        aligned.append({"role": role[m["from"]], "content": m["value"]})
    if (not ranking and len(aligned) % 2 != 0) or (ranking and len(aligned) % 2 == 0):
        return "sharegpt_message_count"
    if not aligned:
        return "sharegpt_empty"
    if kto:
        return aligned[:-1], aligned[-1:]
    if ranking:
        if row["chosen"]["from"] not in even or row["rejected"]["from"] not in even:
            return "sharegpt_response_role"
        return aligned, [
            {"role": role[row[k]["from"]], "content": row[k]["value"]} for k in ("chosen", "rejected")
        ]
    return aligned[:-1], aligned[-1:]


def check_sharegpt(row: dict[str, Any], ranking: bool = False, kto: bool = False) -> str | None:
    aligned = sharegpt_align(row, ranking, kto)
    return aligned if isinstance(aligned, str) else None


_OPENAI_KEYS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
}


def check_openai_chat(row: Any, *, need_assistant: bool = True) -> str | None:
    """One line of chat SFT data (see the module docstring for what it covers)."""
    if not isinstance(row, dict):
        return "data_type"
    unknown = set(row) - {"messages", "tools", "parallel_tool_calls"}
    if unknown:
        return f"unrecognized_key:{sorted(unknown)[0]}"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing_messages_list"
    tools = row.get("tools")
    names = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools_not_a_list"
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                return "tool_not_a_function"
            if not function.get("name") or not isinstance(function.get("parameters", {}), dict):
                return "tool_missing_name"
            names.add(function["name"])
    open_calls: set[str] = set()
    for m in messages:
        error = _openai_message(m, names, open_calls)
        if error:
            return error
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return "example_missing_assistant_message"
    return None


def _openai_message(m: Any, names: set[str], open_calls: set[str]) -> str | None:
    if not isinstance(m, dict) or "role" not in m:
        return "message_missing_key"
    if m["role"] not in _OPENAI_KEYS:
        return "unrecognized_role"
    if set(m) - _OPENAI_KEYS[m["role"]]:
        return "message_unrecognized_key"
    calls = m.get("tool_calls")
    if m["role"] != "tool" and open_calls:
        return "tool_call_without_response"  # every call is answered before the conversation goes on
    if calls:
        if not isinstance(calls, list):
            return "tool_calls_not_a_list"
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or call.get("type") != "function" or not call.get("id"):
                return "tool_call_malformed"
            if names and function.get("name") not in names:
                return "tool_call_unknown_function"
            try:
                arguments = json.loads(function.get("arguments"))
            except (TypeError, ValueError):
                return "tool_call_arguments_not_json"
            if not isinstance(arguments, dict):
                return "tool_call_arguments_not_an_object"
            open_calls.add(call["id"])
        if m.get("content") is not None and not isinstance(m["content"], str):
            return "missing_content"
    elif not isinstance(m.get("content"), str) or (m["role"] != "assistant" and not m["content"]):
        return "missing_content"
    if m["role"] == "tool":
        if m.get("tool_call_id") not in open_calls:
            return "tool_response_without_call"
        open_calls.discard(m["tool_call_id"])
    if "weight" in m and m["weight"] not in (0, 1):
        return "weight_not_0_or_1"
    return None


def check_openai_dpo(row: Any) -> str | None:
    """One line of DPO data: `input` (messages, optional tools) and one assistant message per output."""
    if not isinstance(row, dict):
        return "data_type"
    if set(row) != {"input", "preferred_output", "non_preferred_output"}:
        return "dpo_keys"
    error = check_openai_chat(row["input"], need_assistant=False)
    if error:
        return f"input:{error}"
    if row["input"]["messages"][-1]["role"] not in ("user", "tool"):
        return "input_ends_on_" + str(row["input"]["messages"][-1]["role"])
    for key in ("preferred_output", "non_preferred_output"):
        output = row[key]
        if not isinstance(output, list) or len(output) != 1 or output[0].get("role") != "assistant":
            return f"{key}_not_one_assistant_message"
        names = {t["function"]["name"] for t in row["input"].get("tools") or []}
        error = _openai_message(output[0], names, set())
        if error:
            return f"{key}:{error}"
    return None
