"""A real PostgreSQL server for tests (Debian's `postgresql` package): a throwaway cluster on
loopback, owned by an unprivileged user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cluster(timeout_s: float = 60) -> Iterator[str]:
    """Start a throwaway cluster; yields the URI of an empty database `lake`."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    assert initdb and pg_ctl, "install Debian's postgresql package (the Makefile does)"
    # Under /tmp itself: pytest's folders are private to root, out of the server user's reach.
    root = Path(tempfile.mkdtemp(prefix="trajforge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        as_user = ["runuser", "-u", user, "--"]
        shutil.chown(root, user)
    data, port = root / "data", _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "tf", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=timeout_s,
        env=env,
    )
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=timeout_s + 10,
        env=env,
    )
    try:
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "tf",
                "-d",
                "postgres",
                "-qc",
                "CREATE DATABASE lake",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        yield f"postgresql://tf@127.0.0.1:{port}/lake"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=timeout_s,
        )
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
