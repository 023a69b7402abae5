"""What the end-to-end tests ask of the lake through the command line."""

from __future__ import annotations

import json
from pathlib import Path


def sql_json(cli, out: Path, query: str) -> list[dict]:
    result = cli("sql", "--out", str(out), "--format", "json", query)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_counts(cli, out: Path) -> dict[str, int]:
    """The first run's counts (a MAP, which JSON may show as key/value pairs)."""
    counts = sql_json(cli, out, "SELECT counts FROM runs")[0]["counts"]
    return dict(counts) if not isinstance(counts, list) else {k: v for k, v in counts}
