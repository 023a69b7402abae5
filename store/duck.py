"""DuckDB basics the lake and its SQL guard share: a connection that never downloads an extension,
the packaged ducklake extension, Arrow -> DuckDB types, quoting, and error text in one line."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from trajforge.schemas.errors import LakeError

# Nothing is ever installed or loaded behind our back: the ducklake extension comes from its wheel.
OFFLINE = {
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
}

_SCALARS: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
}


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory connection that installs and autoloads nothing."""
    return duckdb.connect(":memory:", config=OFFLINE)


def extension_path() -> Path:
    """The ducklake extension shipped by the `duckdb-extension-ducklake` wheel for this duckdb."""
    version = duckdb.__version__
    fix = f"install it with: pip install duckdb-extension-ducklake=={version}"
    try:
        import duckdb_extension_ducklake
    except ImportError as exc:
        raise LakeError(f"the packaged ducklake extension is missing; {fix}") from exc
    root = Path(duckdb_extension_ducklake.__file__).parent
    path = root / "extensions" / f"v{version}" / "ducklake.duckdb_extension"
    if not path.is_file():
        raise LakeError(f"no ducklake extension for duckdb {version} at {path}; {fix}")
    return path


def duck_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type that round-trips `arrow_type`."""
    if pa.types.is_map(arrow_type):
        return f"MAP({duck_type(arrow_type.key_type)}, {duck_type(arrow_type.item_type)})"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"{duck_type(arrow_type.value_type)}[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f"{quote(f.name)} {duck_type(f.type)}" for f in arrow_type)
        return f"STRUCT({fields})"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    try:
        return _SCALARS[arrow_type]
    except KeyError:
        raise TypeError(f"no DuckDB type for Arrow type {arrow_type}") from None


def quote(identifier: str) -> str:
    """`identifier` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (DuckDB's run on for lines), or its class name."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
