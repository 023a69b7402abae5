"""The action grammar, by ref into the latest observation: click eN, type eN "text",
select eN "option", press "Key", scroll down|up, go back."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trajforge.environments.browser.dom import Element


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


async def perform(page: Any, action: Action, element: Element | None) -> str | None:
    """Do `action` on the page (element: the one its ref names); what was wrong with it, or None."""
    if action.verb == "press":
        await page.keyboard.press(action.text)
    elif action.verb == "scroll":
        sign = -1 if action.text == "up" else 1
        await page.evaluate("(sign) => window.scrollBy(0, sign * window.innerHeight * 0.8)", sign)
    elif action.verb == "back":
        if await page.go_back(wait_until="load") is None:
            return "there is no previous page"
    else:
        assert element is not None
        target = page.locator(f'[data-tf-ref="{element.ref}"]')
        if await target.count() != 1:
            return f"element {element.ref} is no longer on the page"
        if action.verb == "click":
            await target.click()
        elif action.verb == "type":
            if not element.editable:
                return f"{element.ref} is a {element.role}, not a text field"
            await target.fill(action.text)
        elif element.role != "select":
            return f"{element.ref} is a {element.role}, not a select"
        elif action.text not in element.options:
            return f"{element.ref} has no option {quote(action.text)}"
        else:
            await target.select_option(label=action.text)
    return None
