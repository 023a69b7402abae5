"""A run's folder: its manifest (status), the Parquet the pipeline staged, the validation report.

OUT/runs/RUN_ID/manifest.json     status: running | staged | validation_failed | committed_step |
                                  committed; attempt_log: each attempt's start and how it ended
OUT/runs/RUN_ID/lock              held (flock) by the process running the run; holds its pid
OUT/runs/RUN_ID/plan.json         the run's task specs, so a resume knows every (task, policy) item
OUT/runs/RUN_ID/staging/TABLE/    part-*.parquet written by the pipeline; a retry of the failed
                                  items adds part-retryN-*.parquet next to the first attempt's
OUT/runs/RUN_ID/validation.json   the Great Expectations report of the last validation
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trajforge.schemas import arrow
from trajforge.schemas.errors import TrajforgeError


class RunLocked(TrajforgeError, RuntimeError):
    """Another process is running the same run in the same output folder."""

    reason = "run_locked"

    def __init__(self, run_id: str, pid: str) -> None:
        super().__init__(
            f"run {run_id} is already running in process {pid or '?'} with this --out; "
            "wait for it to finish (or stop it), then run the command again"
        )
        self.pid = pid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never half of one, even when two processes
    write at once (each writes its own temp file) or the machine stops right after."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


_HELD: dict[Path, int] = {}  # run folders whose lock this process holds -> depth


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

    @property
    def plan_path(self) -> Path:
        return self.path / "plan.json"

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the run's exclusive lock (re-entrant within this process), waiting for it when
        `wait`, else RunLocked names the pid of the process that holds it. The kernel drops it
        when the process dies."""
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(self.run_id, os.pread(fd, 64, 0).decode(errors="replace").strip()) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the flock

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}

    def set_status(self, status: str, **fields: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest_path, {**self.manifest(), **fields, "status": status})

    def begin_attempt(self) -> None:
        """Log a new attempt at the run; an earlier one that never ended was killed or crashed."""
        log = self.manifest().get("attempt_log", [])
        for earlier in log:
            earlier.setdefault("ended", "stopped")  # killed (kill -9, a dead machine) or crashed
        log.append({"started_at": datetime.now(UTC).isoformat(), "pid": os.getpid()})
        self.set_status(self.manifest().get("status", "running"), attempt_log=log)

    def end_attempt(self, outcome: str) -> None:
        log = self.manifest().get("attempt_log", [])
        if log:
            log[-1].update(ended=outcome, finished_at=datetime.now(UTC).isoformat())
            self.set_status(self.manifest().get("status", "running"), attempt_log=log)

    def clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def parts(self, table: str, prefix: str = "part") -> list[Path]:
        """The finished part files of a staged table (Beam's temp folders are skipped)."""
        return sorted((self.staging / table).glob(f"{prefix}-*.parquet"))

    def remove_parts(self, prefix: str) -> None:
        """Every table's part files of one attempt (a retry that crashed half-way)."""
        for table in (*arrow.TABLES, "counts"):  # counts: what the stages dropped (pipelines.synthesis)
            for f in self.parts(table, prefix):
                f.unlink()

    def read_staged(self, table: str) -> pa.Table:
        """Every finished part file of a staged table, as written: not cast to the contract, so
        validation sees a schema that drifted."""
        files = self.parts(table)
        if not files:
            return arrow.TABLES[table][0].empty_table()
        parts = [pq.read_table(f) for f in files]
        return pa.concat_tables(parts, promote_options="permissive")

    def iter_staged(
        self, table: str, batch_rows: int, columns: list[str] | None = None, batch_bytes: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The staged table in record batches of at most `batch_rows` rows (and about `batch_bytes`
        bytes uncompressed, for wide rows), part by part, as written."""
        for f in self.parts(table):
            with pq.ParquetFile(f) as part:
                meta, rows = part.metadata, batch_rows
                if batch_bytes and meta.num_rows:
                    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                    rows = max(1, min(batch_rows, batch_bytes * meta.num_rows // max(size, 1)))
                yield from part.iter_batches(batch_size=rows, columns=columns)

    def drop_staged_rows(self, table: str, drop: Callable[[pa.Table], pa.Array]) -> None:
        """Rewrite each part of `table` without the rows where `drop` (a boolean mask) is true."""
        for f in self.parts(table):
            data = pq.read_table(f)
            mask = pc.fill_null(drop(data), False)
            if not pc.any(mask).as_py():
                continue
            tmp = f.with_name(f".{f.name}.tmp")
            pq.write_table(data.filter(pc.invert(mask)), tmp, compression="zstd")
            os.replace(tmp, f)


def list_run_dirs(out: Path) -> list[RunDir]:
    root = out / "runs"
    if not root.is_dir():
        return []
    return [RunDir(out, p.name) for p in sorted(root.iterdir()) if (p / "manifest.json").exists()]
