"""One server per model spec per machine, shared by every thread and process that asks for it.

The first thread of the first process that asks starts the server under a watchdog process
(`python -m trajforge.inference.shared_server --guard`); every process holds a shared lock on the
model's users file while it uses the server, and the watchdog stops the server as soon as no
process holds it (a process that dies, even by SIGKILL, lets go of its lock). The server also dies
with its watchdog (PR_SET_PDEATHSIG on Linux). Where they live: $TRAJFORGE_SERVER_DIR, else a
folder of this user under the system's temp dir; `servers.log` there lists every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The module, not its names: tests stand the CPU server in for vLLM by patching serve.resolve_engine.
from trajforge.inference import serve
from trajforge.inference.serve import (
    SERVER_DIR_ENV,
    ServerHandle,
    check_model_dir,
    spawn,
    stop_process,
    vllm_command,
    wait_ready,
)

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    """This process's share of a machine-wide server: a shared lock on its users file."""

    url: str
    users_fd: int
    guard: subprocess.Popen | None  # when this process started it
    count: int = 0


_LEASES: dict[str, _Lease] = {}
_LEASES_LOCK = threading.Lock()


def server_dir() -> Path:
    return Path(
        os.environ.get(SERVER_DIR_ENV) or Path(tempfile.gettempdir()) / f"trajforge-servers-{os.getuid()}"
    )


def shared_server(
    model_path: str | Path, engine: str = "vllm", name: str | None = None, ready_timeout_s: float = 900.0
) -> ServerHandle:
    """The machine's one server of this model and engine, started if none runs (see the module
    docstring). Each handle's `stop()` gives back its share; the server stops once every
    process has given back all of its shares, or has died."""
    path = check_model_dir(model_path).resolve()
    name = name or path.name
    engine = serve.resolve_engine(engine)
    key = hashlib.sha256(f"{path}\0{engine}\0{name}".encode()).hexdigest()[:16]
    with _LEASES_LOCK:
        lease = _LEASES.get(key)
        if lease is None:
            lease = _LEASES[key] = _lease(key, path, engine, name, ready_timeout_s)
        lease.count += 1
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            _release(key)

    return ServerHandle(lease.url, name, engine, release)


def _release(key: str) -> None:
    with _LEASES_LOCK:
        lease = _LEASES[key]
        lease.count -= 1
        if lease.count > 0:
            return
        del _LEASES[key]
    os.close(lease.users_fd)  # our shared lock goes with it; the watchdog sees who is left
    if lease.guard is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            lease.guard.wait(timeout=0)  # reap it if it is done


def _lease(key: str, path: Path, engine: str, name: str, ready_timeout_s: float) -> _Lease:
    folder = server_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {k: str(folder / f"{key}.{k}") for k in ("lock", "users", "json")}
    with _flock(files["lock"], fcntl.LOCK_EX):  # one starter at a time, and never while a watchdog stops it
        users = os.open(files["users"], os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(users, fcntl.LOCK_SH)
        try:
            state = _read_json(files["json"])
            if state and _pid_alive(state.get("guard_pid", 0)) and _answers(state["url"]):
                return _Lease(state["url"], users, None)
            host, port = "127.0.0.1", _free_port()
            url = f"http://{host}:{port}"
            cmd = server_command(engine, path, host, port, name)
            guard = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trajforge.inference.shared_server",
                    "--guard",
                    json.dumps(files),
                    "--",
                    *cmd,
                ]
            )
            _write_json(
                files["json"], {"url": url, "guard_pid": guard.pid, "model": str(path), "engine": engine}
            )
            with open(folder / "servers.log", "a") as fh:
                fh.write(f"{time.time():.3f} start {key} {url} {path} pid={os.getpid()} guard={guard.pid}\n")
            log.info("started a shared %s server for %s at %s", engine, path, url)
            wait_ready(url, ready_timeout_s, alive=lambda: guard.poll() is None)
            return _Lease(url, users, guard)
        except BaseException:
            os.close(users)
            raise


def server_command(engine: str, path: Path, host: str, port: int, name: str) -> list[str]:
    if engine == "vllm":
        return vllm_command(path, host, port, name)
    cmd = [sys.executable, "-m", "trajforge.cli", "serve-model", "--model", str(path), "--engine", engine]
    return cmd + ["--host", host, "--port", str(port), "--name", name]


def _guard(files: dict[str, str], cmd: list[str], poll_s: float = 0.5) -> int:
    """The watchdog: runs the server, stops it once no process holds the users lock."""
    server = spawn(cmd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while server.poll() is None:
            time.sleep(poll_s)
            with (
                contextlib.suppress(BlockingIOError),  # a starter holds the lock, or users remain
                _flock(files["lock"], fcntl.LOCK_EX | fcntl.LOCK_NB),
                _flock(files["users"], fcntl.LOCK_EX | fcntl.LOCK_NB),
            ):
                _forget(files["json"])  # nobody uses it: the next user starts a new one
                break
    except KeyboardInterrupt:
        pass
    finally:
        _forget(files["json"])
        stop_process(server)
    return 0


def _forget(state_path: str) -> None:
    state = _read_json(state_path)
    if state and state.get("guard_pid") == os.getpid():
        with contextlib.suppress(OSError):
            os.unlink(state_path)


@contextlib.contextmanager
def _flock(path: str, how: int) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    # python -m trajforge.inference.shared_server --guard FILES_JSON -- SERVER_COMMAND...
    sys.exit(_guard(json.loads(sys.argv[2]), sys.argv[sys.argv.index("--") + 1 :]))
