"""Where a lake's DuckLake catalog lives, and how writers to it take turns.

- `sqlite` (the default for a new lake): `{out}/catalog.sqlite`. Readers in other processes read
  while a writer commits; writers take turns through a file lock beside the catalog.
- `postgres://USER@HOST:PORT/DB` (or `postgresql://`): DuckLake's catalog for many machines.
  Writers take turns through a PostgreSQL advisory lock held on a connection of their own, so a
  writer that dies releases it with its connection. The password comes from PGPASSWORD or
  ~/.pgpass (one written into the URI is used but never stored).
- `duckdb`: `{out}/catalog.ducklake`, the catalog of lakes made before the others existed; it
  admits one process at a time, readers included. `trajforge migrate` moves such a lake.

A lake whose catalog is not the default one records it (password removed) in `{out}/catalog.json`,
so commands given only `--out` find it.

Writers take turns so that a commit's "add only the ids the lake lacks" sees every row committed
before it: DuckLake would let two concurrent appends of the same id both commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import duckdb

from trajforge.schemas.errors import LakeError

CatalogKind = Literal["sqlite", "postgres", "duckdb"]
SQLITE_FILE = "catalog.sqlite"
DUCKDB_FILE = "catalog.ducklake"
POINTER = "catalog.json"
DEFAULT: CatalogKind = "sqlite"
_LOCK_KEY = 0x7472616A  # the advisory lock of trajforge's writers ("traj")
# Errors of a commit that lost a race with another writer: retrying the whole transaction helps.
TRANSIENT = ("database is locked", "Transaction conflict", "could not serialize", "deadlock detected")

_EXTENSIONS = {
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
}


@dataclass(frozen=True)
class Catalog:
    kind: CatalogKind
    location: str  # a file path, or a libpq URI

    @property
    def spec(self) -> str:
        """What `--catalog` takes to name this catalog again (no password)."""
        if self.kind == "postgres":
            return redact(self.location)
        return f"{self.kind}:{self.location}"

    def describe(self) -> str:
        return f"{self.kind} catalog {redact(self.location) if self.kind == 'postgres' else self.location}"

    def attach_target(self) -> str:
        if self.kind == "duckdb":
            return f"ducklake:{self.location}"
        return f"ducklake:{self.kind}:{self.location}"

    def extensions(self) -> list[Path]:
        """The packaged DuckDB extensions this catalog needs besides ducklake's."""
        if self.kind not in _EXTENSIONS:
            return []
        module, name = _EXTENSIONS[self.kind]
        version = duckdb.__version__
        package = module.replace("_", "-")
        fix = f"install it with: pip install {package}=={version}"
        try:
            imported = __import__(module)
        except ImportError as exc:
            raise LakeError(f"a {self.kind} catalog needs the packaged {name} extension; {fix}") from exc
        path = Path(imported.__file__).parent / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
        if not path.is_file():
            raise LakeError(f"no {name} extension for duckdb {version} at {path}; {fix}")
        return [path]

    def exists(self) -> bool:
        if self.kind == "postgres":
            return _has_ducklake(self.location)
        return Path(self.location).is_file()

    @contextlib.contextmanager
    def writer_turn(self, timeout_s: float) -> Iterator[None]:
        """Hold the writers' lock of this catalog (a DuckDB file locks itself)."""
        if self.kind == "sqlite":
            with _file_lock(Path(self.location + ".lock"), timeout_s, self):
                yield
        elif self.kind == "postgres":
            with _advisory_lock(self.location, timeout_s, self):
                yield
        else:
            yield


def resolve(out: Path, spec: str | None = None) -> Catalog:
    """The catalog of the lake at `out`: `spec` (a `--catalog` value) when given, else the one the
    lake recorded, else a DuckDB-file catalog already there, else the default (SQLite)."""
    recorded = _recorded(out)
    if spec is None or not spec.strip():
        if recorded is not None:
            return recorded
        if (out / DUCKDB_FILE).is_file():
            return Catalog("duckdb", str(out / DUCKDB_FILE))
        return Catalog("sqlite", str(out / SQLITE_FILE))
    catalog = parse(spec, out)
    existing = recorded or ((out / DUCKDB_FILE).is_file() and Catalog("duckdb", str(out / DUCKDB_FILE)))
    if existing and _key(existing) != _key(catalog):
        raise LakeError(
            f"--catalog {catalog.spec}: the lake at {out} already uses the {existing.describe()}; "
            f"pass --catalog {existing.spec}, another --out, or move it with `trajforge migrate`"
        )
    return catalog


def parse(spec: str, out: Path) -> Catalog:
    """A `--catalog` value: sqlite[:PATH], duckdb[:PATH], postgres://USER@HOST:PORT/DB."""
    text = spec.strip()
    if text.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(text)
        if not parts.hostname or not parts.path.strip("/"):
            raise LakeError(
                f"--catalog {redact(text)}: name the server and the database, "
                "e.g. postgres://USER@HOST:5432/DBNAME"
            )
        return Catalog("postgres", urlunsplit(("postgresql", *parts[1:])))
    kind, _, path = text.partition(":")
    if kind == "sqlite":
        return Catalog("sqlite", str(Path(path).resolve()) if path else str(out / SQLITE_FILE))
    if kind == "duckdb":
        return Catalog("duckdb", str(Path(path).resolve()) if path else str(out / DUCKDB_FILE))
    raise LakeError(
        f"--catalog {text!r}: not a catalog; use sqlite (the default), sqlite:PATH, "
        "postgres://USER@HOST:PORT/DB or duckdb"
    )


def record(out: Path, catalog: Catalog) -> None:
    """Note a catalog that is not found by its file in the lake's folder, so later commands find it."""
    found_by_file = (Catalog("sqlite", str(out / SQLITE_FILE)), Catalog("duckdb", str(out / DUCKDB_FILE)))
    if catalog in found_by_file or _recorded(out) == catalog:
        return
    tmp = out / f".{POINTER}.tmp"
    tmp.write_text(json.dumps({"catalog": catalog.spec}) + "\n")
    os.replace(tmp, out / POINTER)


def _recorded(out: Path) -> Catalog | None:
    try:
        spec = json.loads((out / POINTER).read_text())["catalog"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LakeError(f"{out / POINTER} is unreadable ({exc}); fix or remove it") from exc
    return parse(spec, out)


def _key(catalog: Catalog) -> tuple[str, str]:
    return catalog.kind, redact(catalog.location) if catalog.kind == "postgres" else catalog.location


def redact(uri: str) -> str:
    """A libpq URI without its password."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, *parts[2:]))


def transient(exc: BaseException) -> bool:
    """Whether a failed commit lost a race with another writer (retry it) rather than failed."""
    return any(marker in str(exc) for marker in TRANSIENT)


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float, catalog: Catalog) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, delay = time.monotonic() + timeout_s, 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LakeError(
                        f"another writer has held the {catalog.describe()} for {timeout_s:g} s; "
                        "retry when it has finished"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        yield  # the kernel releases the lock if this process dies
    finally:
        os.close(fd)


@contextlib.contextmanager
def _advisory_lock(uri: str, timeout_s: float, catalog: Catalog) -> Iterator[None]:
    try:
        import psycopg
    except ImportError as exc:
        raise LakeError("a postgres catalog needs psycopg: pip install 'psycopg[binary]'") from exc
    try:
        conn = psycopg.connect(uri, autocommit=True, connect_timeout=max(1, int(min(timeout_s, 30))))
    except psycopg.Error as exc:
        raise LakeError(f"cannot reach the {catalog.describe()}: {_first_line(exc)}") from exc
    try:
        try:
            conn.execute(f"SET lock_timeout = '{max(1, int(timeout_s * 1000))}ms'")
            conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        except psycopg.errors.LockNotAvailable:
            raise LakeError(
                f"another writer has held the {catalog.describe()} for {timeout_s:g} s; "
                "retry when it has finished"
            ) from None
        yield  # the server releases the lock when this connection ends, however the process ends
    finally:
        conn.close()


def _has_ducklake(uri: str) -> bool:
    """Whether the database holds a DuckLake catalog; True when unsure (attaching then tells)."""
    try:
        import psycopg

        with psycopg.connect(uri, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass('ducklake_metadata') IS NOT NULL").fetchone()
    except Exception:  # noqa: BLE001 - unreachable or no psycopg: Lake.open reports it in one line
        return True
    return bool(row and row[0])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
