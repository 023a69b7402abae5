"""Examples (convert.py) in the shape each trainer reads.

- trl: TRL 1.16's column sets (trl/data_utils.py): `messages`; `prompt`/`chosen`/`rejected`;
  `prompt`/`completion`/`label`; and the stepwise `prompt`/`completions`/`labels` of the PRM
  trainer TRL dropped after 1.13. Tool-call arguments stay dicts; the row's tools (Example.tools)
  go in a `tools` column of JSON text, which TRL's SFTTrainer passes to the chat template.
  Messages whose keys differ (tool calls) are stored one JSON object each (`list<json>`):
  Parquet's struct unification would give every message every key as null, which crashes real
  chat templates (Llama 3.1/3.2).
- sharegpt: LLaMA-Factory's sharegpt (`conversations` of {from, value}, `system`, `tools`);
  a function call's value is the JSON of {name, arguments} with arguments a dict.
- openai: OpenAI fine-tuning JSONL: chat SFT `messages` (+ `tools`), DPO `input`/
  `preferred_output`/`non_preferred_output`; tool-call arguments are JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from trajforge.store.export.convert import Example, Message

JSON = pa.json_(pa.string())
TEXT_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SHAREGPT_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])

# Which formats each style can express.
STYLE_FORMATS = {
    "trl": ("sft", "dpo", "kto", "prm"),
    "sharegpt": ("sft", "dpo", "kto"),
    "openai": ("sft", "dpo"),
}


@dataclass(frozen=True)
class Style:
    """How one (style, format) writes: a row function, and the Arrow schema (None: JSONL)."""

    name: str
    fmt: str
    schema: pa.Schema | None
    row: Callable[[Example], dict[str, Any]]

    @property
    def suffix(self) -> str:
        return "jsonl" if self.schema is None else "parquet"


def make_style(name: str, fmt: str, tool_calls: bool) -> Style:
    if fmt not in STYLE_FORMATS[name]:
        raise ValueError(f"--style {name} has no {fmt} format; it writes {', '.join(STYLE_FORMATS[name])}")
    if name == "trl":
        return Style(name, fmt, _trl_schema(fmt, tool_calls), lambda e: _trl_row(e, fmt, tool_calls))
    if name == "sharegpt":
        return Style(name, fmt, _sharegpt_schema(fmt), _sharegpt_row)
    return Style(name, fmt, None, _openai_row)


# --- trl -------------------------------------------------------------------------------------

_META = {
    "sft": [("env", pa.string()), ("policy", pa.string()), ("total_reward", pa.float64())],
    "prm": [("env", pa.string()), ("policy", pa.string()), ("success", pa.bool_())],
    "dpo": [
        ("source", pa.string()),
        ("step_index", pa.int32()),
        ("q_chosen", pa.float64()),
        ("q_rejected", pa.float64()),
    ],
}
_META["kto"] = _META["dpo"]
# The id column names the lake row a training row comes from (for kto, `:chosen`/`:rejected` added).
ID_COLUMN = {"sft": "trajectory_id", "prm": "trajectory_id", "dpo": "pair_id", "kto": "pair_id"}


def _trl_schema(fmt: str, tool_calls: bool) -> pa.Schema:
    msgs = pa.list_(JSON if tool_calls else TEXT_MESSAGE)
    columns = {
        "sft": [("messages", msgs)],
        "dpo": [("prompt", msgs), ("chosen", msgs), ("rejected", msgs)],
        "kto": [("prompt", msgs), ("completion", msgs), ("label", pa.bool_())],
        "prm": [
            ("prompt", pa.string()),
            ("completions", pa.list_(pa.string())),
            ("labels", pa.list_(pa.bool_())),
            ("values", pa.list_(pa.float64())),
        ],
    }[fmt]
    tools = [("tools", pa.string())] if tool_calls and fmt != "prm" else []
    ids = [(ID_COLUMN[fmt], pa.string()), ("task_id", pa.string())]
    return pa.schema([*columns, *tools, *ids, *_META[fmt]])


def _trl_row(example: Example, fmt: str, tool_calls: bool) -> dict[str, Any]:
    row = dict(example.fields)
    if tool_calls and fmt != "prm":  # the column is there; a text row of a mixed export has no tools
        row["tools"] = json.dumps(example.tools) if example.tools else None
    return {**row, ID_COLUMN[fmt]: example.id, "task_id": example.task_id, **example.meta}


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """The schema with JSON columns as their string storage: rows are built from JSON text."""
    return pa.schema([pa.field(f.name, _storage(f.type)) for f in schema])


def _storage(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):
        return t.storage_type
    if pa.types.is_list(t):
        return pa.list_(_storage(t.value_type))
    return t


def encode_json_columns(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """Messages of `list<json>` columns as JSON text, keys in a fixed order (same bytes)."""
    for f in schema:
        if pa.types.is_list(f.type) and isinstance(f.type.value_type, pa.BaseExtensionType):
            row[f.name] = [json.dumps(m, ensure_ascii=False) for m in row[f.name]]
    return row


# --- sharegpt (LLaMA-Factory) ----------------------------------------------------------------

SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


def _sharegpt_schema(fmt: str) -> pa.Schema:
    turns = ("conversations", pa.list_(SHAREGPT_TURN))
    columns = {
        "sft": [turns],
        "dpo": [turns, ("chosen", SHAREGPT_TURN), ("rejected", SHAREGPT_TURN)],
        "kto": [turns, ("label", pa.bool_())],
    }[fmt]
    return pa.schema([*columns, ("system", pa.string()), ("tools", pa.string()), ("id", pa.string())])


def _turn(m: Message) -> dict[str, str]:
    if m.get("tool_calls"):
        # LLaMA-Factory reads the call as JSON with its arguments a dict; it has no place for a thought.
        call = m["tool_calls"][0]["function"]
        return {"from": "function_call", "value": json.dumps(call, ensure_ascii=False)}
    tag = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}[m["role"]]
    return {"from": tag, "value": m["content"]}


def _sharegpt_row(example: Example) -> dict[str, Any]:
    f = example.fields
    head = f.get("messages") or f["prompt"]
    system = head[0]["content"] if head and head[0]["role"] == "system" else ""
    tools = json.dumps(example.tools) if example.tools else ""
    row: dict[str, Any] = {"system": system, "tools": tools, "id": example.id}
    strip = 1 if system else 0
    if "messages" in f:
        row["conversations"] = [_turn(m) for m in f["messages"][strip:]]
    elif "chosen" in f:
        row["conversations"] = [_turn(m) for m in f["prompt"][strip:]]
        row["chosen"], row["rejected"] = _turn(f["chosen"][0]), _turn(f["rejected"][0])
    else:
        # LLaMA-Factory's KTO: the last turn is the response, the turns before it the prompt.
        row["conversations"] = [_turn(m) for m in (f["prompt"] + f["completion"])[strip:]]
        row["label"] = f["label"]
    return row


# --- openai ----------------------------------------------------------------------------------


def _openai_message(m: Message) -> dict[str, Any]:
    if m.get("tool_calls"):
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.dumps(c["function"]["arguments"]),
                },
            }
            for c in m["tool_calls"]
        ]
        return {"role": "assistant", "content": m["content"] or None, "tool_calls": calls}
    if m["role"] == "tool":
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]}
    return {"role": m["role"], "content": m["content"]}


def _openai_row(example: Example) -> dict[str, Any]:
    f = example.fields
    tools = {"tools": example.tools} if example.tools else {}
    if "messages" in f:
        return {"messages": [_openai_message(m) for m in f["messages"]], **tools}
    return {
        "input": {"messages": [_openai_message(m) for m in f["prompt"]], **tools},
        "preferred_output": [_openai_message(m) for m in f["chosen"]],
        "non_preferred_output": [_openai_message(m) for m in f["rejected"]],
    }
