"""Drop the second copy of a record that a retried bundle emitted again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trajforge.schemas.ids import canonical_json

# Columns that differ between two executions of the same deterministic work.
VOLATILE = frozenset({"wall_s", "created_at"})


@dataclass
class Deduped:
    rows: list[dict[str, Any]]
    dropped: int = 0
    conflicts: list[str] = field(default_factory=list)  # ids emitted twice with other content


def _content(row: dict[str, Any]) -> str:
    return canonical_json({k: v for k, v in row.items() if k not in VOLATILE})


def dedupe(rows: Iterable[dict[str, Any]], key: str) -> Deduped:
    """Keep the first row per id. A repeat with the same content is dropped and counted;
    a repeat with other content is a conflict (non-determinism) and is kept, so the
    uniqueness expectation fails loudly instead of one version winning silently."""
    seen: dict[Any, str] = {}
    out = Deduped(rows=[])
    for row in rows:
        ident = row.get(key)
        content = _content(row)
        if ident is not None and ident in seen:
            if seen[ident] == content:
                out.dropped += 1
                continue
            out.conflicts.append(str(ident))
        elif ident is not None:
            seen[ident] = content
        out.rows.append(row)
    return out
