"""The action grammar, by ref into the latest observation: click eN, type eN "text",
select eN "option", press "Key", scroll down|up, go back."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    verb: str  # click, type, select, press, scroll, back
    ref: str = ""
    text: str = ""


def quote(text: str) -> str:
    """Text as actions write it: a JSON string."""
    return json.dumps(text, ensure_ascii=False)


_ACTION = re.compile(r'^(click|type|select)\s+(e\d+)(?:\s+(".*"))?$|^press\s+(".*")$', re.DOTALL)


def parse_action(text: str) -> Action:
    """The Action that `text` writes; ValueError (saying what is expected) when malformed."""
    line = text.strip()
    if line in ("scroll down", "scroll up"):
        return Action("scroll", text=line.split()[1])
    if line == "go back":
        return Action("back")
    match = _ACTION.match(line)
    if not match:
        raise ValueError(
            f'unknown action {line!r}; use click eN, type eN "text", select eN "option", '
            'press "Key", scroll down|up or go back'
        )
    verb, ref, arg, key = match.groups()
    if key is not None:
        return Action("press", text=_unquote(key))
    if (verb == "click") != (arg is None):
        raise ValueError(f"{line!r}: " + ("click takes only a ref" if arg else f'{verb} needs eN "text"'))
    return Action(verb, ref, _unquote(arg) if arg else "")


def _unquote(arg: str) -> str:
    try:
        value = json.loads(arg)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{arg!r} is not a quoted string (write it as JSON, e.g. "a \\"b\\"")') from exc
    if not isinstance(value, str):
        raise ValueError(f"{arg!r} is not a quoted string")
    return value
