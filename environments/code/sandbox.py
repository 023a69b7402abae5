"""One episode's Python interpreter in its own process, fenced in by bubblewrap (Debian's `bwrap`).

The fence: a network namespace with nothing in it (loopback of its own), a process namespace,
a read-only view of the system (/usr, /etc, /opt and the interpreter: none of the data, the
project, the homes), a private scratch folder as /tmp (its only writable place), an
unprivileged user of its own (so the process limit holds: the kernel
exempts root from it), and limits on address space, processes, file size and CPU time (prlimit).
Each cell also has a CPU limit (the kernel's SIGXCPU stops it, the interpreter lives on) and a
wall deadline (the whole sandbox is killed and a fresh interpreter started: its state is lost).

`isolation="none"` runs the same interpreter as a plain child process with the same resource
limits but no namespaces: for benchmarks of the fence's cost, never for untrusted code.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trajforge.environments.base import ConfigError, EnvironmentFailure

KERNEL = Path(__file__).with_name("kernel.py")
Isolation = Literal["bwrap", "none"]
# Users of the sandboxes: one each, so that one sandbox's processes never count against another's.
_UIDS = itertools.count()
UID_BASE, UID_SPAN = 200_000, 50_000


@dataclass(frozen=True)
class Limits:
    cell_timeout_s: float = 10.0  # wall time of one cell; past it the sandbox is killed
    cell_cpu_s: int = 5  # CPU seconds of one cell
    cpu_s: int = 300  # CPU seconds of the whole interpreter
    memory_mb: int = 512  # address space
    processes: int = 32  # processes of the sandbox's user
    file_mb: int = 16  # largest file it may write
    output_chars: int = 20_000  # of one cell's output; past it the cell is stopped


@dataclass
class CellResult:
    output: str
    error: str | None  # the traceback, when the cell raised or was stopped
    reason: str | None  # None: ran; "error": raised; else the limit or "timeout" that stopped it
    restarted: bool = False  # the interpreter was killed and a fresh one started: state is lost
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


class Sandbox:
    """A persistent interpreter; `run(code)` executes a cell in it. Close it when done."""

    def __init__(self, limits: Limits | None = None, isolation: Isolation = "bwrap") -> None:
        if isolation == "bwrap" and bwrap_path() is None:
            raise ConfigError(
                "isolation: bubblewrap (bwrap) is not installed; `apt-get install -y bubblewrap` "
                "(make test does), or set isolation: none for trusted code only"
            )
        if isolation not in ("bwrap", "none"):
            raise ConfigError(f"isolation: {isolation!r} is invalid; choose bwrap or none")
        self.limits = limits or Limits()
        self.isolation = isolation
        self.uid = UID_BASE + (os.getpid() * 7919 + next(_UIDS)) % UID_SPAN
        self.scratch = Path(tempfile.mkdtemp(prefix="trajforge-scratch-"))
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._used = False  # a request was sent since the interpreter started
        self.starts = 0

    # -- the process ------------------------------------------------------------------------
    def _command(self) -> list[str]:
        lim = self.limits
        python = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")
        if not Path(python).exists():
            python = sys.executable
        # The kernel's source goes on the command line: no file of the project's is in view.
        kernel = [python, "-I", "-S", "-c", KERNEL.read_text()]
        limits = [
            "prlimit",
            f"--as={lim.memory_mb * 1024 * 1024}",
            f"--fsize={lim.file_mb * 1024 * 1024}",
            f"--cpu={lim.cpu_s}",
            f"--nproc={lim.processes}",
            "--core=0",
            "--",
        ]
        if self.isolation == "none":
            return limits + kernel
        fence = [
            "bwrap",
            *_system_view(Path(python)),
            "--dev", "/dev",
            "--proc", "/proc",
            "--bind", str(self.scratch), "/tmp",
            "--chdir", "/tmp",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent",
            "--clearenv",
            "--setenv", "HOME", "/tmp",
            "--setenv", "TMPDIR", "/tmp",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "TRAJFORGE_OUTPUT_CHARS", str(lim.output_chars),
            "--setenv", "TRAJFORGE_FENCED", "1",
        ]  # fmt: skip
        user = [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
        return fence + user + limits + kernel

    def _start(self) -> None:
        if self.isolation == "bwrap":
            os.chown(self.scratch, self.uid, self.uid)
        env = {"PATH": "/usr/bin:/bin", "TRAJFORGE_OUTPUT_CHARS": str(self.limits.output_chars)}
        env["TMPDIR"] = str(self.scratch)
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=self.scratch,
                env=env,
                start_new_session=True,  # one process group: killed as one
            )
        except OSError as exc:
            why = f"sandbox: cannot start the interpreter: {exc}"
            raise EnvironmentFailure(why, reason="sandbox") from exc
        self._buffer = b""
        self.starts += 1

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        # The processes inside die with the namespace's init, a moment after it: wait for them.
        deadline = time.monotonic() + 5
        while self.isolation == "bwrap" and self.processes() and time.monotonic() < deadline:
            time.sleep(0.01)

    def processes(self) -> int:
        """Processes of this sandbox's user on the host (only the fence gives it one of its own)."""
        n = 0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    n += entry.stat().st_uid == self.uid
        return n

    # -- cells ------------------------------------------------------------------------------
    def run(self, code: str) -> CellResult:
        return self._request({"code": code, "cpu_s": self.limits.cell_cpu_s})

    def check(self, test: str, entry_point: str) -> CellResult:
        """Hidden tests: `test` defines check(candidate); run against the namespace's entry point."""
        return self._request({"test": test, "entry_point": entry_point, "cpu_s": self.limits.cell_cpu_s})

    def _request(self, request: dict) -> CellResult:
        if self._proc is None:
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        start = time.monotonic()
        self._used = True
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            return self._died(start)
        line = self._read_line(start + self.limits.cell_timeout_s)
        if line is None:
            if self._proc is not None and self._proc.poll() is None:
                at_limit = self.isolation == "bwrap" and self.processes() >= self.limits.processes
                self._kill()
                reason = "process_limit" if at_limit else "timeout"
                return CellResult(
                    "",
                    f"Stopped: the cell ran past {self.limits.cell_timeout_s:g} s ({reason}); "
                    "the interpreter was restarted and its variables are lost.",
                    reason,
                    restarted=True,
                    wall_s=time.monotonic() - start,
                )
            return self._died(start)
        answer = json.loads(line)
        wall = time.monotonic() - start
        return CellResult(answer["output"], answer["error"], answer["reason"], wall_s=wall)

    def _died(self, start: float) -> CellResult:
        code = self._proc.poll() if self._proc is not None else None
        self._kill()
        reason = "cpu_limit" if code in (-signal.SIGKILL, -signal.SIGXCPU) else "crashed"
        return CellResult(
            "",
            f"Stopped: the interpreter died (exit {code}, {reason}); a fresh one starts with the next cell.",
            reason,
            restarted=True,
            wall_s=time.monotonic() - start,
        )

    def _read_line(self, deadline: float) -> bytes | None:
        """The kernel's next answer, or None at the deadline or when it died."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def restart(self) -> None:
        """A fresh interpreter (empty namespace) and an emptied scratch folder."""
        if not self._used:  # nothing ran since the last start: it is fresh already
            return
        self._used = False
        self._kill()
        for child in self.scratch.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _system_view(python: Path) -> list[str]:
    """bwrap arguments for a read-only view of the system and nothing else: /usr, /etc, /opt and
    the interpreter's installation, not the data (no /work, /home, /root, /var, /srv, /mnt), so
    a cell can read neither hidden tests nor the lake nor anyone's credentials."""
    args: list[str] = []
    for top in ("/usr", "/etc", "/opt"):
        if Path(top).is_dir():
            args += ["--ro-bind", top, top]
    for link in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        path = Path(link)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), link]
        elif path.is_dir():
            args += ["--ro-bind", link, link]
    prefix = python.resolve().parent.parent  # PREFIX/bin/pythonX.Y
    if not any(prefix.is_relative_to(top) for top in ("/usr", "/opt")):
        for i in range(2, len(prefix.parts)):  # its parents, traversable by the sandbox's user
            args += ["--perms", "0755", "--dir", str(Path(*prefix.parts[:i]))]
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args
