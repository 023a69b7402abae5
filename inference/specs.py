"""Model SPECs (`openai:URL[#model]`, `hf:PATH`, `vllm:PATH`) to dependable clients, and the
fingerprint of the model a SPEC names (part of the run id and of every cache key)."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trajforge.inference.client import Backend
from trajforge.inference.reliability import ReliableClient, UsageMeter
from trajforge.schemas.errors import ConfigError


def reliable_client(
    spec: str,
    cache_dir: str | Path | None = None,
    timeout_s: float = 60.0,
    price_in_per_m: float = 0.0,
    price_out_per_m: float = 0.0,
    api_key_env: str | None = None,
    revision: str | None = None,
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """The backend a SPEC names behind the reliability layer, and what gives back what it holds
    (vllm: its share of the machine's server). `api_key_env` names the environment variable of
    an openai: server's key (default: OPENAI_API_KEY when set); the key is read where requests
    are sent, so it never travels with the client."""
    kind, _, rest = spec.partition(":")
    on_close = None
    if kind == "openai":
        backend: Backend = _openai_backend(spec, rest, api_key_env)
    elif kind == "hf":
        backend = _hf_backend(spec, rest)
    elif kind == "vllm":
        backend, on_close = _vllm_backend(spec, rest)
    else:
        raise ConfigError(f"policy: {spec!r} is not a model spec; use openai:URL#model, hf:PATH or vllm:PATH")
    meter = UsageMeter(price_in_per_m, price_out_per_m)
    client = ReliableClient(
        backend,
        cache=cache_dir,
        timeout_s=timeout_s,
        meter=meter,
        probe=kind != "hf",  # a server can hang while it answers /v1/models; a local model cannot
        fingerprint=model_fingerprint(spec, revision),
    )
    return client, on_close


CLIENT_OPTIONS = (
    "cache_dir",
    "timeout_s",
    "price_in_per_m",
    "price_out_per_m",
    "api_key_env",
    "revision",
)


def client_from_options(
    spec: str, options: dict[str, Any]
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """`reliable_client` from the run's model options (those that are not the client's, such
    as a policy's temperature, are left out)."""
    return reliable_client(spec, **{k: v for k, v in options.items() if k in CLIENT_OPTIONS})


def _openai_backend(spec: str, rest: str, api_key_env: str | None) -> Backend:
    from trajforge.inference.client import OpenAIHTTPBackend

    url, _, model = rest.partition("#")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"policy: {spec!r} needs a server URL after 'openai:', e.g. "
            "openai:http://127.0.0.1:8000/v1#my-model (start one with `trajforge serve-model PATH`)"
        )
    return OpenAIHTTPBackend(url, model or None, api_key_env=api_key_env)


def _hf_backend(spec: str, rest: str) -> Backend:
    from trajforge.inference.local import LocalBackend

    if not rest or not (Path(rest) / "config.json").is_file():
        raise ConfigError(
            f"policy: {spec!r} needs a local model directory after 'hf:' (one with config.json, as "
            "save_pretrained writes it), e.g. hf:./models/tiny; nothing is downloaded from a hub"
        )
    return LocalBackend(rest)


def _vllm_backend(spec: str, rest: str) -> tuple[Backend, Callable[[], None]]:
    from trajforge.inference.client import OpenAIHTTPBackend
    from trajforge.inference.serve import shared_server

    if not rest or not (Path(rest) / "config.json").is_file():
        raise ConfigError(
            f"policy: {spec!r} needs a local model directory after 'vllm:', e.g. vllm:./models/qwen"
        )
    try:
        server = shared_server(rest, engine="vllm")  # one per model per machine, whoever asks
    except ConfigError as exc:
        raise ConfigError(f"policy: {spec!r}: {exc}; or use hf:{rest} on CPU") from exc
    return OpenAIHTTPBackend(server.url, server.name), server.stop


# -- fingerprints -----------------------------------------------------------------------------------
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
EDGE_BYTES = 1 << 20  # of a weights file, its first and last MB are hashed (with its size)

_FILE_HASHES: dict[tuple, str] = {}
_FILE_HASHES_LOCK = threading.Lock()


def model_fingerprint(spec: str, revision: str | None = None) -> str:
    """What identifies the model behind a SPEC, "" when nothing does (random, oracle, or an
    openai: server without `model.revision`): for hf:/vllm: a hash of the model directory's
    files (see `weights_fingerprint`), for openai: the user's revision. A revision given for a
    local model is folded in too."""
    kind, _, rest = spec.partition(":")
    parts = []
    if kind in ("hf", "vllm") and Path(rest).is_dir():
        parts.append(weights_fingerprint(rest))
    if revision and kind in ("hf", "vllm", "openai"):
        parts.append(f"revision={revision}")
    return "+".join(parts)


def weights_fingerprint(directory: str | Path) -> str:
    """sha256 over every file of a model directory (its path inside the directory and size; the
    whole content of config, tokenizer and other small files; the first and last MB of weights
    files and anything over 2 MB). Not mtimes: a copied model keeps its fingerprint. Memoised
    per file by (size, mtime, inode), so asking again costs a stat per file."""
    root = Path(directory).resolve()
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{_file_hash(path)}\0".encode())
    return digest.hexdigest()[:16]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _FILE_HASHES_LOCK:
        if memo in _FILE_HASHES:
            return _FILE_HASHES[memo]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as fh:
        if st.st_size <= 2 * EDGE_BYTES and not path.name.endswith(WEIGHT_SUFFIXES):
            h.update(fh.read())
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(max(0, st.st_size - EDGE_BYTES), os.SEEK_SET)
            h.update(fh.read(EDGE_BYTES))
    value = h.hexdigest()
    with _FILE_HASHES_LOCK:
        _FILE_HASHES[memo] = value
    return value
