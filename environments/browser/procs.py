"""Chromium's processes as /proc shows them: the tree under a pid, alive or not, killed."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from pathlib import Path


def parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux; just [pid] elsewhere)."""
    if not Path("/proc").is_dir():
        return [pid]
    parents = parent_pids()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def is_chromium(pid: int) -> bool:
    """By the program's name (argv[0]), not its arguments: a path may mention chromium."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return b"chrom" in program.rsplit(b"/", 1)[-1]


def alive(pid: int | None) -> bool:
    """The process runs (a zombie does not); True where /proc cannot tell."""
    if pid is None or not Path("/proc").is_dir():
        return pid is not None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_chromium(pids: list[int]) -> None:
    for pid in pids:
        if is_chromium(pid):  # not a recycled pid
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
