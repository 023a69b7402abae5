"""Lake rows into training examples, before any style: conversations (SFT), single-step preference
pairs (DPO), unpaired completions (KTO) and stepwise process supervision (PRM).

Messages are the chat messages of schemas.conversation. With `tool_calls`, each action becomes a
call of one tool, `act(action)`, with its arguments as a dict, and each later observation the
tool's answer (role `tool`, paired by `tool_call_id`); styles turn them into their own shapes.
A trajectory of an environment with tools (its `tools` column set) comes out with its real calls
(the step's `tool_name` and `tool_arguments`) and the environment's tools, whatever `tool_calls`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trajforge.schemas import conversation

Message = dict[str, Any]

TOOL_NAME = "act"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Take one action in the environment; the answer is what you observe next.",
            "parameters": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "description": "one action the environment accepts"}
                },
                "required": ["action"],
            },
        },
    }
]


@dataclass(frozen=True)
class Options:
    tool_calls: bool = False
    threshold: float = 0.5  # PRM: a step whose value reaches it is labelled good
    dull_thoughts: frozenset[str] = frozenset()  # constant thoughts: dropped (query.constant_thoughts)


@dataclass(frozen=True)
class Example:
    """One row before styling: its task (for the split), id, and the format's fields."""

    task_id: str
    id: str
    fields: dict[str, Any]
    meta: dict[str, Any]
    tools: list[dict[str, Any]] | None = None  # the tools the row's calls call (OpenAI's format)


def sft_examples(rows: Iterable[dict[str, Any]], opts: Options) -> Iterator[Example]:
    for row in rows:
        meta = {"env": row["env"], "policy": row["policy"], "total_reward": row["total_reward"]}
        if row.get("tools"):
            msgs = tool_call_messages(row, opts)
            yield Example(row["task_id"], row["id"], {"messages": msgs}, meta, json.loads(row["tools"]))
            continue
        msgs = _clean(conversation.messages(row["env"], row["instruction"], row["steps"] or []), opts)
        yield Example(row["task_id"], row["id"], {"messages": _tooled(msgs, opts)}, meta, _act_tools(opts))


def tool_call_messages(row: dict[str, Any], opts: Options) -> list[Message]:
    """The conversation of a trajectory whose actions are tool calls: each call an assistant turn
    with `tool_calls` (arguments a dict), the observation after it the tool's answer. A step that
    was no valid call stays a text turn, and the observation after it a user turn. The user turns
    carry no admissible-actions block: a tool-calling model is given the tools instead."""
    out = conversation.messages(row["env"], row["instruction"], [])
    call: tuple[str, str] | None = None  # (id, name) of the previous step's call
    for step in row["steps"] or []:
        index = int(step["index"])
        if call is None:
            text = conversation.user_text(row["instruction"], step["observation"], index)
            out.append({"role": "user", "content": text})
        else:
            id_, name = call
            out.append({"role": "tool", "tool_call_id": id_, "name": name, "content": step["observation"]})
        thought = None if step.get("thought") in opts.dull_thoughts else step.get("thought")
        if step.get("tool_name"):
            call = (f"call_{index}", step["tool_name"])
            function = {"name": call[1], "arguments": json.loads(step["tool_arguments"] or "{}")}
            tool_calls = [{"id": call[0], "type": "function", "function": function}]
            out.append({"role": "assistant", "content": thought or "", "tool_calls": tool_calls})
        else:
            call = None
            out.append({"role": "assistant", "content": conversation.assistant_text(step["action"], thought)})
    return out


def _act_tools(opts: Options) -> list[dict[str, Any]] | None:
    return TOOLS if opts.tool_calls else None


def prm_examples(rows: Iterable[dict[str, Any]], opts: Options) -> Iterator[Example]:
    """prompt: the system prompt and the first observation as text; completions: one per step
    (the observation that step saw, then the action); labels: value >= threshold; values kept."""
    for row in rows:
        steps = row["steps"] or []
        msgs = conversation.messages(row["env"], row["instruction"], [])
        first = conversation.first_user_text(row["instruction"], steps[0]["observation"])
        completions = []
        for i, step in enumerate(steps):
            thought = None if step.get("thought") in opts.dull_thoughts else step.get("thought")
            text = conversation.assistant_text(step["action"], thought)
            completions.append(text if i == 0 else f"{step['observation']}\n{text}")
        values = [float(step["value"]) for step in steps]
        yield Example(
            row["task_id"],
            row["id"],
            {
                "prompt": f"{msgs[0]['content']}\n\n{first}",
                "completions": completions,
                "labels": [v >= opts.threshold for v in values],
                "values": values,
            },
            {"env": row["env"], "policy": row["policy"], "success": row["success"]},
        )


def dpo_examples(rows: Iterable[dict[str, Any]], opts: Options, dropped: dict[str, int]) -> Iterator[Example]:
    """Single-step pairs: a sibling pair as it is; a trajectory pair cut at its first differing
    turn (DPO trains on every token of chosen/rejected, so no observation may be in them)."""
    for task_rows in _by_task(rows):
        seen: set[str] = set()
        for row in task_rows:
            cut = _single_step(row, opts)
            if isinstance(cut, str):
                dropped[cut] = dropped.get(cut, 0) + 1
                continue
            prompt, chosen, rejected = cut
            key = json.dumps([prompt, chosen, rejected], sort_keys=True)
            if key in seen:  # two trajectory pairs of a task can cut to the same step
                dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                continue
            seen.add(key)
            fields = {"prompt": _tooled(prompt, opts)}
            whole_c, whole_r = _tooled(prompt + chosen, opts), _tooled(prompt + rejected, opts)
            fields["chosen"], fields["rejected"] = whole_c[len(prompt) :], whole_r[len(prompt) :]
            yield Example(row["task_id"], row["id"], fields, _pair_meta(row), _act_tools(opts))


def kto_examples(rows: Iterable[dict[str, Any]], opts: Options, dropped: dict[str, int]) -> Iterator[Example]:
    """Each side of a pair as an unpaired completion: sibling pairs give one step, trajectory
    pairs the whole rest of the episode (KTO's answer to trajectory pairs without a cut)."""
    for task_rows in _by_task(rows):
        seen: set[str] = set()
        for row in task_rows:
            prefix = _clean(json.loads(row["prefix"]), opts)
            for label, side in ((True, "chosen"), (False, "rejected")):
                completion = _side(row, side, opts)
                if row["source"] == "mcts_sibling":
                    completion = [_action_only(completion[0], row)]
                key = json.dumps([prefix, completion, label], sort_keys=True)
                if key in seen:  # a chosen step is the chosen side of each of its siblings' pairs
                    dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                    continue
                seen.add(key)
                whole = _tooled(prefix + completion, opts)
                yield Example(
                    row["task_id"],
                    f"{row['id']}:{side}",
                    {"prompt": whole[: len(prefix)], "completion": whole[len(prefix) :], "label": label},
                    _pair_meta(row),
                    _act_tools(opts),
                )


def _single_step(row: dict[str, Any], opts: Options) -> tuple[list, list, list] | str:
    prefix = _clean(json.loads(row["prefix"]), opts)
    chosen, rejected = _side(row, "chosen", opts), _side(row, "rejected", opts)
    if row["source"] != "trajectory":
        chosen, rejected = [_action_only(chosen[0], row)], [_action_only(rejected[0], row)]
        return prefix, chosen, rejected
    for i, (c, r) in enumerate(zip(chosen, rejected, strict=False)):
        if c != r:
            if c["role"] != "assistant":
                return "observations_differ"  # the same actions met different observations
            return prefix + chosen[:i], [c], [r]
    return "no_difference"


def _side(row: dict[str, Any], side: str, opts: Options) -> list[Message]:
    text = row[side]
    if row["source"] == "trajectory":
        return _clean(json.loads(text), opts)
    return _clean([{"role": "assistant", "content": text}], opts)


def _action_only(message: Message, row: dict[str, Any]) -> Message:
    """A sibling pair compares actions: the tree asked no thought of the rejected sibling, so the
    chosen one's thought goes too (else DPO learns "thoughts are preferred")."""
    _, other = conversation.parse_assistant_text(row["rejected"])
    action, _ = conversation.parse_assistant_text(message["content"])
    return message if other else {"role": "assistant", "content": action}


def _clean(msgs: list[Message], opts: Options) -> list[Message]:
    """Assistant turns without the constant thoughts."""
    if not opts.dull_thoughts:
        return msgs
    out = []
    for m in msgs:
        if m["role"] == "assistant":
            action, thought = conversation.parse_assistant_text(m["content"])
            if thought in opts.dull_thoughts:
                m = {**m, "content": action}
        out.append(m)
    return out


def _tooled(msgs: list[Message], opts: Options) -> list[Message]:
    """Text turns as tool calls (see the module's docstring); unchanged without tool_calls."""
    if not opts.tool_calls:
        return msgs
    out: list[Message] = []
    call: str | None = None
    for m in msgs:
        if m["role"] == "assistant":
            action, thought = conversation.parse_assistant_text(m["content"])
            call = f"call_{sum(1 for o in out if o['role'] == 'assistant')}"
            function = {"name": TOOL_NAME, "arguments": {"action": action}}
            out.append(
                {
                    "role": "assistant",
                    "content": thought or "",
                    "tool_calls": [{"id": call, "type": "function", "function": function}],
                }
            )
        elif m["role"] == "user" and call is not None:
            out.append({"role": "tool", "tool_call_id": call, "name": TOOL_NAME, "content": m["content"]})
        else:
            out.append(m)
    return out


def _by_task(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows of one task (the query orders by task): duplicates are found per task."""
    group: list[dict[str, Any]] = []
    for row in rows:
        if group and row["task_id"] != group[0]["task_id"]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _pair_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": row["source"],
        "step_index": row["step_index"],
        "q_chosen": row["q_chosen"],
        "q_rejected": row["q_rejected"],
    }
