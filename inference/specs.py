"""Model SPECs (`openai:URL[#model]`, `hf:PATH`, `vllm:PATH`) to dependable clients."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trajforge.environments.base import ConfigError
from trajforge.inference.client import Backend
from trajforge.inference.reliability import ReliableClient, UsageMeter


def reliable_client(
    spec: str,
    cache_dir: str | Path | None = None,
    timeout_s: float = 60.0,
    price_in_per_m: float = 0.0,
    price_out_per_m: float = 0.0,
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """The backend a SPEC names behind the reliability layer, and what stops it (vllm: its server)."""
    kind, _, rest = spec.partition(":")
    on_close = None
    if kind == "openai":
        backend: Backend = _openai_backend(spec, rest)
    elif kind == "hf":
        backend = _hf_backend(spec, rest)
    elif kind == "vllm":
        backend, on_close = _vllm_backend(spec, rest)
    else:
        raise ConfigError(f"policy: {spec!r} is not a model spec; use openai:URL#model, hf:PATH or vllm:PATH")
    meter = UsageMeter(price_in_per_m, price_out_per_m)
    return ReliableClient(backend, cache=cache_dir, timeout_s=timeout_s, meter=meter), on_close


CLIENT_OPTIONS = ("cache_dir", "timeout_s", "price_in_per_m", "price_out_per_m")


def client_from_options(
    spec: str, options: dict[str, Any]
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """`reliable_client` from the run's model options (those that are not the client's, such
    as a policy's temperature, are left out)."""
    return reliable_client(spec, **{k: v for k, v in options.items() if k in CLIENT_OPTIONS})


def _openai_backend(spec: str, rest: str) -> Backend:
    from trajforge.inference.client import OpenAIHTTPBackend

    url, _, model = rest.partition("#")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"policy: {spec!r} needs a server URL after 'openai:', e.g. "
            "openai:http://127.0.0.1:8000/v1#my-model (start one with `trajforge serve-model PATH`)"
        )
    return OpenAIHTTPBackend(url, model or None)


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
    from trajforge.inference.serve import start_server

    if not rest or not (Path(rest) / "config.json").is_file():
        raise ConfigError(
            f"policy: {spec!r} needs a local model directory after 'vllm:', e.g. vllm:./models/qwen"
        )
    try:
        server = start_server(rest, engine="vllm")
    except ConfigError as exc:
        raise ConfigError(f"policy: {spec!r}: {exc}; or use hf:{rest} on CPU") from exc
    return OpenAIHTTPBackend(server.url, server.name), server.stop
