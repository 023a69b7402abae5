"""What the end-to-end tests ask of the lake through the command line, and the model server
they run against."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def sql_json(cli, out: Path, query: str) -> list[dict]:
    result = cli("sql", "--out", str(out), "--format", "json", query)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_counts(cli, out: Path) -> dict[str, int]:
    """The first run's counts (a MAP, which JSON may show as key/value pairs)."""
    counts = sql_json(cli, out, "SELECT counts FROM runs")[0]["counts"]
    return dict(counts) if not isinstance(counts, list) else {k: v for k, v in counts}


@contextlib.contextmanager
def served_tiny_model(folder: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`trajforge serve-model --tiny FOLDER ARGS...` in its own process on a free port, as a user
    runs it; yields its root URL once /health answers, and stops it afterwards."""
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trajforge.cli",
            "serve-model",
            "--tiny",
            str(folder),
            "--port",
            str(port),
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve-model did not come up"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
