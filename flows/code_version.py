"""Which code made a run: the package version, the git commit, and a hash of uncommitted changes
to the code (part of the run id, so changed code is a new run)."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

from trajforge import __version__

# What code_version hashes when the checkout has uncommitted changes: the code, not notes or tests.
CODE_PATHS = (
    "trajforge",
    "schemas",
    "environments",
    "inference",
    "synthesizers",
    "validators",
    "pipelines",
    "store",
    "flows",
    "pyproject.toml",
)


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit when running from a checkout, plus a hash of the
    uncommitted changes to the code when there are any (`git_version`)."""
    version = git_version(Path(__file__).resolve().parent)
    return f"{__version__}+{version}" if version else __version__


def git_version(directory: Path, paths: tuple[str, ...] = CODE_PATHS) -> str:
    """HEAD's short sha; with uncommitted changes under `paths` (edits of tracked files, new
    files not ignored), `SHA.dirty-HASH`, HASH covering the diff and the new files' contents.
    "" outside a git checkout."""

    def git(*args: str, cwd: Path = directory) -> bytes:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return b""
        return done.stdout if done.returncode == 0 else b""

    sha = git("rev-parse", "--short=12", "HEAD").decode().strip()
    top = git("rev-parse", "--show-toplevel").decode().strip()
    if not sha or not top:
        return sha
    root = Path(top)
    present = [p for p in paths if (root / p).exists()]
    if not present:
        return sha
    diff = git("diff", "HEAD", "--binary", "--", *present, cwd=root)
    new_files = sorted(
        n
        for n in git("ls-files", "-z", "--others", "--exclude-standard", "--", *present, cwd=root).split(
            b"\0"
        )
        if n
    )
    if not diff and not new_files:
        return sha
    digest = hashlib.sha256(diff)
    for name in new_files:
        digest.update(name + b"\0")
        with contextlib.suppress(OSError):  # gone meanwhile, or unreadable: its name still counts
            digest.update(hashlib.sha256((root / name.decode()).read_bytes()).digest())
    return f"{sha}.dirty-{digest.hexdigest()[:8]}"
