"""`serve-model`: an OpenAI-compatible server for a local model directory.

With vLLM and a GPU (engine 'auto' or 'vllm') it runs vLLM's own server. Otherwise it serves
the model with transformers on CPU (`LocalBackend`) through FastAPI, speaking the subset of
vLLM's protocol the project uses: POST /v1/chat/completions and /v1/completions (n, max_tokens,
temperature, seed, stop, logprobs/top_logprobs, prompt_logprobs, echo, continue_final_message,
`structured_outputs.choice`), GET /v1/models (with `max_model_len`), POST /tokenize and GET /health.
A prompt whose tokens plus `max_tokens` exceed the context (`max_model_len`, by default the model
config's `max_position_embeddings`) is refused with HTTP 400 in vLLM's words.

    serve_model("models/tiny", port=8000)                # blocks; Ctrl-C stops it
    with start_server("models/tiny") as server:          # in the background, on a free port
        OpenAIHTTPBackend(server.url, server.name)
    server = shared_server("models/qwen", engine="vllm")  # one per model per machine, shared

`shared_server` is how `vllm:` specs get their server: the first thread of the first process that
asks starts it under a watchdog process; every process holds a shared lock on the model's users
file while it uses the server, and the watchdog stops the server as soon as no process holds it
(a process that dies, even by SIGKILL, lets go of its lock). The server also dies with its
watchdog (PR_SET_PDEATHSIG on Linux). Where they live: $TRAJFORGE_SERVER_DIR, else a folder of
this user under the system's temp dir; `servers.log` there lists every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajforge.inference.client import ChatRequest, CompletionRequest, InferenceError, Response, TokenLogprob
from trajforge.inference.local import LocalBackend
from trajforge.schemas.errors import ConfigError

ENGINES = ("auto", "vllm", "transformers")
SERVER_DIR_ENV = "TRAJFORGE_SERVER_DIR"
log = logging.getLogger(__name__)


@dataclass
class ServerHandle:
    """A running server; `stop()` (or leaving the `with` block) shuts it down."""

    url: str  # http://host:port, without /v1
    name: str
    engine: str
    _stop: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"serve-model: engine {engine!r} is unknown; use one of {', '.join(ENGINES)}")
    has_vllm = importlib.util.find_spec("vllm") is not None and _has_gpu()
    if engine == "vllm" and not has_vllm:
        raise ConfigError(
            "serve-model: engine 'vllm' needs vLLM and a CUDA GPU, and this machine lacks one; "
            "use --engine transformers (CPU) or auto"
        )
    if engine == "auto":
        return "vllm" if has_vllm else "transformers"
    return engine


def serve_model(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    engine: str = "auto",
    api_key: str | None = None,
    max_model_len: int | None = None,
) -> None:
    """Serve until interrupted. The served model name defaults to the directory's name. With
    `api_key`, requests must carry it as a bearer token (as `vllm serve --api-key`)."""
    path = _check_model_dir(model_path)
    name = name or path.name
    if resolve_engine(engine) == "vllm":
        proc = _start_vllm(path, host, port, name, api_key, max_model_len)
        try:
            proc.wait()
        finally:
            _stop_process(proc)
        return
    sock = _bind(host, port)
    log.info("serving %s at http://%s:%d/v1", name, host, sock.getsockname()[1])
    _uvicorn(build_app(LocalBackend(path, name, max_model_len=max_model_len), api_key)).run(sockets=[sock])


def start_server(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    engine: str = "auto",
    ready_timeout_s: float = 600.0,
    max_model_len: int | None = None,
) -> ServerHandle:
    """Start a server in the background and return once it answers; port 0 picks a free one.
    The CPU server runs on a thread of this process, vLLM in a subprocess of its own."""
    path = _check_model_dir(model_path)
    name = name or path.name
    engine = resolve_engine(engine)
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if engine == "vllm":
        sock.close()  # vLLM binds itself; the port stays free for it in the meantime
        proc = _start_vllm(path, host, port, name, max_model_len=max_model_len)
        handle = ServerHandle(url, name, "vllm", lambda: _stop_process(proc))
        try:
            _wait_ready(url, ready_timeout_s, alive=lambda: proc.poll() is None)
        except BaseException:
            handle.stop()
            raise
        return handle
    backend = LocalBackend(path, name, max_model_len=max_model_len)
    backend.load()  # load before answering /health, so "ready" means ready
    return _start_uvicorn_thread(build_app(backend), sock, url, name)


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP: asyncio turns Nagle off only on sockets that say they are TCP; without it
    # every keep-alive response waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _uvicorn(app: Any) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))


def _start_uvicorn_thread(app: Any, sock: socket.socket, url: str, name: str) -> ServerHandle:
    server = _uvicorn(app)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"serve-{name}"
    )
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    try:
        _wait_ready(url, 30.0, alive=thread.is_alive)
    except BaseException:
        stop()
        raise
    return ServerHandle(url, name, "transformers", stop)


def _wait_ready(url: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the model server for {url} exited before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the model server at {url} was not ready after {timeout_s}s")


def _check_model_dir(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"serve-model: {str(model_path)!r} is not a model directory (no config.json); pass a "
            "directory written by save_pretrained, or --tiny to build a tiny test model"
        )
    return path


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _vllm_command(path: Path, host: str, port: int, name: str, max_model_len: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
    cmd += ["--served-model-name", name, "--host", host, "--port", str(port)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd


def _start_vllm(
    path: Path, host: str, port: int, name: str, api_key: str | None = None, max_model_len: int | None = None
) -> subprocess.Popen:
    cmd = _vllm_command(path, host, port, name, max_model_len)
    log.info("starting %s", " ".join(cmd))
    env = {**os.environ, "VLLM_API_KEY": api_key} if api_key else None  # not in argv, where ps shows it
    return _spawn(cmd, env=env)


def _spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process in a process group of its own (so it is stopped with its children),
    in our session, and killed when its parent dies (Linux)."""
    return subprocess.Popen(cmd, process_group=0, preexec_fn=_die_with_parent, env=env)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1  # noqa: N806
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- one server per model per machine ---------------------------------------------------------------
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
    path = _check_model_dir(model_path).resolve()
    name = name or path.name
    engine = resolve_engine(engine)
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
                [sys.executable, "-m", "trajforge.inference.serve", "--guard", json.dumps(files), "--", *cmd]
            )
            _write_json(
                files["json"], {"url": url, "guard_pid": guard.pid, "model": str(path), "engine": engine}
            )
            with open(folder / "servers.log", "a") as fh:
                fh.write(f"{time.time():.3f} start {key} {url} {path} pid={os.getpid()} guard={guard.pid}\n")
            log.info("started a shared %s server for %s at %s", engine, path, url)
            _wait_ready(url, ready_timeout_s, alive=lambda: guard.poll() is None)
            return _Lease(url, users, guard)
        except BaseException:
            os.close(users)
            raise


def server_command(engine: str, path: Path, host: str, port: int, name: str) -> list[str]:
    if engine == "vllm":
        return _vllm_command(path, host, port, name)
    cmd = [sys.executable, "-m", "trajforge.cli", "serve-model", "--model", str(path), "--engine", engine]
    return cmd + ["--host", host, "--port", str(port), "--name", name]


def _guard(files: dict[str, str], cmd: list[str], poll_s: float = 0.5) -> int:
    """The watchdog: runs the server, stops it once no process holds the users lock."""
    server = _spawn(cmd)
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
        _stop_process(server)
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


# -- the HTTP app ---------------------------------------------------------------------------------
def build_app(backend: LocalBackend, api_key: str | None = None) -> Any:
    import hmac

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"trajforge serve-model: {backend.name}")

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next: Any) -> Any:
            # As vLLM: every /v1 route needs `Authorization: Bearer KEY`; /health stays open.
            given = request.headers.get("authorization", "").encode()
            if request.url.path.startswith("/v1") and not hmac.compare_digest(given, expected):
                return error(401, "Unauthorized", "AuthenticationError")
            return await call_next(request)

    def handle(body: Any, chat: bool) -> JSONResponse:
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", "BadRequestError")
        if body.get("model", backend.name) != backend.name:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        try:
            request = parse_chat_request(body) if chat else parse_completion_request(body)
        except (KeyError, TypeError, ValueError) as exc:
            return error(400, f"invalid request: {exc}", "BadRequestError")
        try:
            response = backend.chat(request) if chat else backend.complete(request)  # type: ignore[arg-type]
        except InferenceError as exc:
            status = 400 if exc.reason in ("bad_request", "unsupported", "context_overflow") else 500
            return error(status, str(exc), "BadRequestError" if status == 400 else "InternalServerError")
        return JSONResponse(response_body(response, chat=chat))

    @app.get("/health")
    def health() -> dict:
        return {}

    @app.get("/v1/models")
    def models() -> dict:
        card = {
            "id": backend.name,
            "object": "model",
            "owned_by": "trajforge",
            "root": str(backend.model_path),
        }
        return {"object": "list", "data": [{**card, "max_model_len": backend.max_model_len}]}

    @app.post("/tokenize")
    def tokenize(body: dict) -> Any:
        """vLLM's: {"model", "messages"} (chat template applied) or {"model", "prompt"} ->
        {"count", "max_model_len", "tokens"}."""
        if body.get("model", backend.name) != backend.name:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        try:
            if "messages" in body:
                ids = backend.token_ids(
                    messages=parse_chat_request({**body, "max_tokens": 1}).messages,
                    add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                    continue_final=bool(body.get("continue_final_message")),
                )
            else:
                ids = backend.token_ids(prompt=parse_completion_request({**body, "max_tokens": 1}).prompt)
        except (KeyError, TypeError, ValueError) as exc:
            return error(400, f"invalid request: {exc}", "BadRequestError")
        except InferenceError as exc:
            return error(400, str(exc), "BadRequestError")
        return {"count": len(ids), "max_model_len": backend.max_model_len, "tokens": ids}

    # Plain `def` handlers run on the server's thread pool; the backend serialises model calls.
    @app.post("/v1/chat/completions")
    def chat_completions(body: dict) -> Any:
        return handle(body, chat=True)

    @app.post("/v1/completions")
    def completions(body: dict) -> Any:
        return handle(body, chat=False)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("serve-model: request failed")
        return error(500, f"{type(exc).__name__}: {exc}", "InternalServerError")

    return app


# -- wire format: the server's side ---------------------------------------------------------------
def _params(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    allowed = {"choice"}
    structured = body.get("structured_outputs") or {}
    if set(structured) - allowed - {"json"}:
        raise ValueError(f"structured_outputs {sorted(set(structured) - allowed)} not supported; use choice")
    stop = body.get("stop") or ()
    if chat:
        logprobs, top = bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
    else:
        raw = body.get("logprobs")
        logprobs, top = raw is not None, int(raw or 0)
    return {
        "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
        "n": int(body.get("n") or 1),
        "temperature": float(body.get("temperature", 1.0)),
        "seed": None if body.get("seed") is None else int(body["seed"]),
        "stop": (stop,) if isinstance(stop, str) else tuple(stop),
        "logprobs": logprobs,
        "top_logprobs": top,
        "prompt_logprobs": None if body.get("prompt_logprobs") is None else int(body["prompt_logprobs"]),
        "choice": structured.get("choice"),
        "json_schema": structured.get("json"),
        "model": body.get("model"),
    }


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError("messages must be a list of {role, content} objects")
    return ChatRequest(
        messages, continue_final=bool(body.get("continue_final_message")), **_params(body, True)
    )


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError("prompt must be one string")
    return CompletionRequest(prompt, echo=bool(body.get("echo")), **_params(body, False))


def response_body(response: Response, *, chat: bool) -> dict[str, Any]:
    choices = []
    for c in response.choices:
        item: dict[str, Any] = {"index": c.index, "finish_reason": c.finish_reason}
        if chat:
            item["message"] = {"role": "assistant", "content": c.text}
            item["logprobs"] = (
                None if c.logprobs is None else {"content": [_chat_token(t) for t in c.logprobs]}
            )
        else:
            item["text"] = c.text
            item["logprobs"] = None if c.logprobs is None else _completion_logprobs(c.logprobs)
        choices.append(item)
    usage = response.usage
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
        "prompt_logprobs": None
        if response.prompt_logprobs is None
        else [_prompt_token(t) for t in response.prompt_logprobs],
    }


def _chat_token(t: TokenLogprob) -> dict[str, Any]:
    tops = [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in t.top.items()]
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": tops}


def _completion_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) or None for t in tokens],
        "text_offset": offsets,
    }


def _prompt_token(t: TokenLogprob | None) -> dict[str, Any] | None:
    """vLLM keys these by token id; this server keys them by the token's text, the prompt's own
    token first (clients read `decoded_token`)."""
    if t is None:
        return None
    ranked = list(t.top)
    own_rank = ranked.index(t.token) + 1 if t.token in ranked else len(ranked) + 1  # at least this
    out = {t.token: {"logprob": t.logprob, "rank": own_rank, "decoded_token": t.token}}
    for rank, (k, v) in enumerate(t.top.items(), 1):
        out.setdefault(k, {"logprob": v, "rank": rank, "decoded_token": k})
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    # python -m trajforge.inference.serve --guard FILES_JSON -- SERVER_COMMAND...
    sys.exit(_guard(json.loads(sys.argv[2]), sys.argv[sys.argv.index("--") + 1 :]))
