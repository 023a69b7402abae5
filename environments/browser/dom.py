"""What the page shows the agent: interactive elements tagged in the DOM with data-tf-ref="eN"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trajforge.environments.browser.actions import quote

# Tags interactive elements with data-tf-ref (kept across observations) and describes them.
_ELEMENTS_JS = """
(rootSelector) => {
  const root = document.querySelector(rootSelector) || document.body;
  const ROLES = new Set(['button', 'link', 'tab', 'checkbox', 'radio', 'menuitem', 'menuitemcheckbox',
    'menuitemradio', 'option', 'treeitem', 'switch', 'combobox', 'textbox', 'searchbox', 'slider',
    'spinbutton']);
  const CONTROLS = new Set(['INPUT', 'SELECT', 'TEXTAREA', 'BUTTON']);
  const NON_TEXT = new Set(['checkbox', 'radio', 'button', 'submit', 'reset', 'image', 'file', 'range',
    'color', 'hidden']);
  const clean = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const pointer = (el) => !!el && getComputedStyle(el).cursor === 'pointer';
  const interactive = (el) => {
    if (el.tagName === 'INPUT') return el.type !== 'hidden';
    if (el.matches('a[href], button, select, textarea, summary, [onclick], [contenteditable=""], '
        + '[contenteditable="true"]')) return true;
    if (ROLES.has(el.getAttribute('role'))) return true;
    return pointer(el) && !pointer(el.parentElement);
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none';
  };
  const editable = (el) => el.tagName === 'TEXTAREA' || el.isContentEditable
    || (el.tagName === 'INPUT' && !NON_TEXT.has(el.type));
  const roleOf = (el) => {
    const role = el.getAttribute('role');
    if (ROLES.has(role)) return role;
    if (el.tagName === 'INPUT') {
      if (el.type === 'checkbox' || el.type === 'radio') return el.type;
      if (['button', 'submit', 'reset', 'image'].includes(el.type)) return 'button';
      return el.type === 'range' ? 'slider' : 'textbox';
    }
    return {A: 'link', BUTTON: 'button', SELECT: 'select', TEXTAREA: 'textbox', SUMMARY: 'button'}[el.tagName]
      || (el.isContentEditable ? 'textbox' : 'clickable');
  };
  const nameOf = (el) => {
    let name = el.getAttribute('aria-label');
    if (!name && el.labels && el.labels.length) name = Array.from(el.labels, (l) => l.innerText).join(' ');
    if (!name && el.tagName === 'INPUT' && ['button', 'submit', 'reset'].includes(el.type)) name = el.value;
    if (!name && !['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) name = el.innerText;
    name = clean(name || el.getAttribute('placeholder') || el.getAttribute('title')
      || el.getAttribute('alt'));
    return name.length > 80 ? name.slice(0, 77) + '...' : name;
  };
  const chosen = new Set();
  const insideChosen = (el) => {
    for (let p = el.parentElement; p && p !== root.parentElement; p = p.parentElement) {
      if (chosen.has(p)) return true;
    }
    return false;
  };
  const out = [];
  for (const el of root.querySelectorAll('*')) {
    if (!interactive(el) || el.disabled || !visible(el)) continue;
    // A link inside a tab is one target, not two; form controls always count.
    if (!CONTROLS.has(el.tagName) && insideChosen(el)) continue;
    chosen.add(el);
    if (!el.dataset.tfRef) {
      window.__tfNextRef = (window.__tfNextRef || 0) + 1;
      el.dataset.tfRef = 'e' + window.__tfNextRef;
    }
    const isEditable = editable(el);
    const isSelect = el.tagName === 'SELECT';
    const isToggle = el.type === 'checkbox' || el.type === 'radio';
    out.push({
      ref: el.dataset.tfRef,
      role: roleOf(el),
      name: nameOf(el),
      value: isEditable ? (el.isContentEditable ? clean(el.innerText) : el.value)
        : isSelect && el.selectedIndex >= 0 ? clean(el.options[el.selectedIndex].text) : null,
      checked: isToggle ? el.checked : null,
      options: isSelect ? Array.from(el.options, (o) => clean(o.text)) : [],
      focused: document.activeElement === el,
      editable: isEditable,
    });
  }
  return {title: document.title, elements: out};
}
"""


@dataclass(frozen=True)
class Element:
    """An interactive element of the latest observation."""

    ref: str
    role: str
    name: str
    value: str | None = None
    checked: bool | None = None
    options: tuple[str, ...] = ()
    focused: bool = False
    editable: bool = False

    def describe(self) -> str:
        parts = [f"[{self.ref}] {self.role}"]
        if self.name:
            parts.append(quote(self.name))
        if self.checked is not None:
            parts.append("checked" if self.checked else "unchecked")
        if self.value is not None:
            parts.append(f"value={quote(self.value)}")
        if self.options:
            parts.append("options: " + ", ".join(quote(o) for o in self.options))
        if self.focused:
            parts.append("(focused)")
        return " ".join(parts)


async def read_elements(page: Any, root: str) -> tuple[str, dict[str, Element]]:
    """The page's title and its interactive elements under `root` by ref, tagging new ones."""
    found = await page.evaluate(_ELEMENTS_JS, root)
    elements = {e["ref"]: Element(**{**e, "options": tuple(e["options"])}) for e in found["elements"]}
    return found["title"], elements
