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

`shared_server.py` runs one such server per model spec per machine for `vllm:` specs; the wire
format of both sides is wire.py's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajforge.inference.local import LocalBackend
from trajforge.inference.wire import parse_chat_request, parse_completion_request, response_body
from trajforge.schemas.errors import ConfigError, InferenceError

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
    path = check_model_dir(model_path)
    name = name or path.name
    if resolve_engine(engine) == "vllm":
        proc = _start_vllm(path, host, port, name, api_key, max_model_len)
        try:
            proc.wait()
        finally:
            stop_process(proc)
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
    path = check_model_dir(model_path)
    name = name or path.name
    engine = resolve_engine(engine)
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if engine == "vllm":
        sock.close()  # vLLM binds itself; the port stays free for it in the meantime
        proc = _start_vllm(path, host, port, name, max_model_len=max_model_len)
        handle = ServerHandle(url, name, "vllm", lambda: stop_process(proc))
        try:
            wait_ready(url, ready_timeout_s, alive=lambda: proc.poll() is None)
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
        wait_ready(url, 30.0, alive=thread.is_alive)
    except BaseException:
        stop()
        raise
    return ServerHandle(url, name, "transformers", stop)


def wait_ready(url: str, timeout_s: float, alive: Callable[[], bool]) -> None:
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


def check_model_dir(model_path: str | Path) -> Path:
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


def vllm_command(path: Path, host: str, port: int, name: str, max_model_len: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
    cmd += ["--served-model-name", name, "--host", host, "--port", str(port)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd


def _start_vllm(
    path: Path, host: str, port: int, name: str, api_key: str | None = None, max_model_len: int | None = None
) -> subprocess.Popen:
    cmd = vllm_command(path, host, port, name, max_model_len)
    log.info("starting %s", " ".join(cmd))
    env = {**os.environ, "VLLM_API_KEY": api_key} if api_key else None  # not in argv, where ps shows it
    return spawn(cmd, env=env)


def spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process in a process group of its own (so it is stopped with its children),
    in our session, and killed when its parent dies (Linux)."""
    return subprocess.Popen(cmd, process_group=0, preexec_fn=_die_with_parent, env=env)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1  # noqa: N806
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen) -> None:
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
