"""The import scan: data flows one way (DESIGN.md), so no module imports a room above its own.

    flows -> pipelines -> synthesizers/validators -> environments/inference -> schemas
    flows -> store -> schemas;  recipes -> synthesizers -> ...;  trajforge/ (the CLI) on top may
    import anything.

Every import counts, lazy ones inside functions too: they run sooner or later."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BELOW: dict[str, set[str]] = {
    "schemas": set(),
    "environments": {"schemas"},
    "inference": {"schemas"},
    "store": {"schemas"},
    "synthesizers": {"environments", "inference", "schemas"},
    "validators": {"environments", "inference", "schemas"},
    "pipelines": {"synthesizers", "validators", "environments", "inference", "schemas"},
    "flows": {"pipelines", "synthesizers", "validators", "environments", "inference", "store", "schemas"},
    # Recipes (`trajforge train`, held-out evaluation) stand apart from the library and use it.
    "recipes": {"synthesizers", "environments", "inference", "schemas"},
}
ROOMS = set(BELOW) | {"trajforge"}


def _room(module: str) -> str | None:
    """The room of a `trajforge.*` module: `trajforge.flows.run` -> flows; the CLI package's own
    modules (`trajforge.cli`) -> trajforge; the bare root package (its __version__) -> None."""
    parts = module.split(".")
    if parts[0] != "trajforge" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in BELOW else "trajforge"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "trajforge":  # a room or the CLI's module; the root's __version__ is no room
                names = (a.name for a in node.names)
                found += [
                    (node.lineno, "trajforge" if n.startswith("__") else f"trajforge.{n}") for n in names
                ]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if ".venv" not in p.parts)


@pytest.mark.parametrize("room", sorted(BELOW))
def test_no_module_imports_a_room_above_its_own(room):
    allowed = BELOW[room] | {room}
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _modules(room)
        for line, module in _imports(path)
        if (target := _room(module)) is not None and target not in allowed
    ]
    assert not wrong, f"{room}/ may import only {sorted(allowed)}:\n" + "\n".join(wrong)


def test_the_scan_sees_every_room_and_catches_an_upward_import(tmp_path):
    assert all(_modules(room) for room in BELOW)
    upward = tmp_path / "m.py"
    upward.write_text(
        "from trajforge import __version__, cli\n\ndef f():\n    from trajforge.flows import config\n"
    )
    assert [_room(m) for _, m in _imports(upward)] == [None, "trajforge", "flows"]
    assert _room("trajforge.cli") == "trajforge" and _room("trajforge") is None
