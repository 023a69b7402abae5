"""Drop the second copy of a record that a retried bundle emitted again.

Only a fixed-size digest of each row's content is kept per id, so deduplicating a batch streams
through it part by part, in bounded memory, whatever the size of its rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trajforge.schemas.ids import canonical_json

# Columns that differ between two executions of the same deterministic work: timing, and the
# accounting of model use (a replay answered from the request cache records other usage).
VOLATILE = frozenset(
    {"wall_s", "created_at", "tokens_in", "tokens_out", "cost_usd", "model_calls", "cached_calls"}
)


def is_volatile(column: str) -> bool:
    return column in VOLATILE or column.startswith("cached_")  # e.g. cached_tokens_in


def digest(row: dict[str, Any]) -> bytes:
    """16 bytes standing for the row's non-volatile content."""
    content = canonical_json({k: v for k, v in row.items() if not is_volatile(k)})
    return hashlib.blake2b(content.encode(), digest_size=16).digest()


@dataclass
class Deduper:
    """Streams the rows of one table: keep the first row per id. A repeat with the same content
    is dropped and counted; a repeat with other content is a conflict (non-determinism) and is
    kept, so the uniqueness expectation fails loudly instead of one version winning silently."""

    key: str
    dropped: int = 0
    conflicts: list[str] = field(default_factory=list)  # ids emitted twice with other content
    cross_chunk: list[str] = field(default_factory=list)  # those first seen in an earlier call
    seen: dict[Any, bytes] = field(default_factory=dict)

    def keep(self, rows: Iterable[dict[str, Any]]) -> list[bool]:
        """For each row of one chunk, whether it stays."""
        mask, fresh = [], set()
        for row in rows:
            ident = row.get(self.key)
            content = digest(row)
            if ident is not None and ident in self.seen:
                if self.seen[ident] == content:
                    self.dropped += 1
                    mask.append(False)
                    continue
                self.conflicts.append(str(ident))
                if ident not in fresh:
                    self.cross_chunk.append(str(ident))
            elif ident is not None:
                self.seen[ident] = content
                fresh.add(ident)
            mask.append(True)
        return mask


@dataclass
class Deduped:
    rows: list[dict[str, Any]]
    dropped: int = 0
    conflicts: list[str] = field(default_factory=list)


def dedupe(rows: Iterable[dict[str, Any]], key: str) -> Deduped:
    """The rows of one table without repeats (see Deduper)."""
    rows = list(rows)
    deduper = Deduper(key)
    kept = [row for row, keep in zip(rows, deduper.keep(rows), strict=True) if keep]
    return Deduped(kept, deduper.dropped, deduper.conflicts)
