"""A run's folder: its manifest (status), the Parquet the pipeline staged, the validation report.

OUT/runs/RUN_ID/manifest.json     status: running | staged | validation_failed | committed
OUT/runs/RUN_ID/staging/TABLE/    part-*.parquet written by the pipeline
OUT/runs/RUN_ID/validation.json   the Great Expectations report of the last validation
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajforge.schemas import arrow


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    out: Path
    run_id: str

    @property
    def path(self) -> Path:
        return self.out / "runs" / self.run_id

    @property
    def staging(self) -> Path:
        return self.path / "staging"

    @property
    def report(self) -> Path:
        return self.path / "validation.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}

    def set_status(self, status: str, **fields: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest_path, {**self.manifest(), **fields, "status": status})

    def clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def read_staged(self, table: str) -> pa.Table:
        """Every finished part file of a staged table (Beam's temp folders are skipped), as
        written: not cast to the contract, so validation sees a schema that drifted."""
        files = sorted((self.staging / table).glob("part-*.parquet"))
        if not files:
            return arrow.TABLES[table][0].empty_table()
        parts = [pq.read_table(f) for f in files]
        return pa.concat_tables(parts, promote_options="permissive")


def list_run_dirs(out: Path) -> list[RunDir]:
    root = out / "runs"
    if not root.is_dir():
        return []
    return [RunDir(out, p.name) for p in sorted(root.iterdir()) if (p / "manifest.json").exists()]
